"""The real operator (`mailwarden operator`: kopf + the kubernetes client, in a subprocess,
over HTTP) reconciling UnsubscribeStores — and SpamPolicies wired to them — against the
KMock emulator. Each test uses its own namespace.

The emulator has no controllers: FakeDeploymentController (conftest) marks rollouts done
(every pod ready, i.e. every store pod's `/readyz` passing); a store whose database is lost
is simulated by setting its Deployment's status to no ready pods, which is what the kubelet
reports when `/readyz` answers 503. No garbage collector: deletion is checked through owner
references. No RBAC: the last test checks every request the operator made against the
chart's rules instead."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from mailwarden_operator.common.kube import (
    CONFIGMAPS,
    DEPLOYMENTS,
    EVENTS,
    HPAS,
    PDBS,
    PVCS,
    SECRETS,
    SERVICES,
    SPAMPOLICIES,
    UNSUBSCRIBESTORES,
)
from mailwarden_operator.unsubscribestore import naming as store_naming
from mailwarden_operator.unsubscribestore.reconcile import (
    check_fingerprint_key_secret,
    check_signing_key_secret,
)
from tests.operator.conftest import (
    Cluster,
    OperatorProcess,
    condition,
    example_policy,
    model_configmap,
    naming,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)
DSN = "postgresql://app:s3cret-pw@pg-rw:5432/app?target_session_attrs=read-write"


def store_body(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": "mailwarden.dev/v1alpha1", "kind": "UnsubscribeStore",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"storage": {"type": "postgres",
                                 "postgres": {"dsnSecretRef": {"name": "pg-app",
                                                               "key": "uri"}}},
                     "durability": "replicated",
                     "http": {"publicBaseURL": "https://unsub.example.com"}}}
    body["spec"].update(spec)
    return body


def secret(ns: str, name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": ns},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def create_store(cluster: Cluster, ns: str, name: str = "sup", **spec: Any) -> dict:
    cluster.kube.create(SECRETS, ns, secret(ns, "pg-app", uri=DSN))
    return cluster.kube.create(UNSUBSCRIBESTORES, ns, store_body(ns, name, **spec))


def get_store(cluster: Cluster, ns: str, name: str = "sup") -> dict | None:
    return cluster.kube.get(UNSUBSCRIBESTORES, ns, name)


def wait_condition(cluster: Cluster, res, ns: str, name: str, ctype: str, status: str,
                   reason: str | None = None, timeout: float = 60) -> dict:
    def check():
        body = cluster.kube.get(res, ns, name)
        c = condition(body, ctype)
        if c and c["status"] == status and (reason is None or c["reason"] == reason):
            return body
        return None
    return wait_for(check, timeout, f"{res.kind} {ns}/{name} {ctype}={status}"
                    + (f"/{reason}" if reason else ""))


def secret_writes(cluster: Cluster, ns: str) -> list[str]:
    return [w for w in cluster.writes() if f"/namespaces/{ns}/secrets" in w]


def conditions(body: dict) -> dict:
    return {c["type"]: (c["status"], c["reason"]) for c in body["status"]["conditions"]}


def test_create_generates_the_key_once_and_renders_every_child(
        cluster: Cluster, operator: OperatorProcess) -> None:
    ns = "create"
    created = create_store(cluster, ns)
    body = wait_condition(cluster, UNSUBSCRIBESTORES, ns, "sup", "Ready", "True")
    uid = created["metadata"]["uid"]

    # The signing key: generated, usable by the server, not owned (it outlives the store).
    key_secret = cluster.kube.get(SECRETS, ns, "sup-signing-key")
    check_signing_key_secret(key_secret)
    key = base64.b64decode(key_secret["data"]["current"]).decode()
    assert len(key) == 43  # 32 random bytes, base64url
    assert "ownerReferences" not in key_secret["metadata"]
    assert key_secret["metadata"]["labels"][store_naming.STORE_LABEL] == "sup"
    # The fingerprint key the filter pods share: generated, usable, not owned (forgotten
    # suppressions are kept under it).
    fp_secret = cluster.kube.get(SECRETS, ns, "sup-fingerprint-key")
    check_fingerprint_key_secret(fp_secret)
    fp_key = base64.b64decode(fp_secret["data"]["key"]).decode()
    assert len(bytes.fromhex(fp_key)) == 32
    assert "ownerReferences" not in fp_secret["metadata"]
    assert fp_secret["metadata"]["labels"][store_naming.STORE_LABEL] == "sup"
    assert secret_writes(cluster, ns) == [f"POST /api/v1/namespaces/{ns}/secrets"] * 3, \
        "one Secret from the test (the DSN), two from the operator (the keys), nothing else"
    logs = operator.tail(10_000)
    assert key not in logs and DSN not in logs and fp_key not in logs

    dep = cluster.kube.get(DEPLOYMENTS, ns, "sup-unsubscribe")
    pod = dep["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["args"][-1] == "--migrate-only"
    assert "--no-migrate" in pod["containers"][0]["args"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"dsn": "pg-app", "signing-key": "sup-signing-key",
                       "fingerprint-key": "sup-fingerprint-key"}
    args = pod["containers"][0]["args"]
    assert args[args.index("--fingerprint-key-file"):][:4] == [
        "--fingerprint-key-file", "/etc/mailwarden/fingerprint-key/key",
        "--fingerprint-dir", "/var/cache/mailwarden/fingerprints"]
    assert pod["containers"][0]["image"] == "registry.example/mailwarden:test"
    children = [dep, cluster.kube.get(SERVICES, ns, "sup-unsubscribe"),
                cluster.kube.get(SERVICES, ns, "sup-unsubscribe-http"),
                cluster.kube.get(HPAS, ns, "sup-unsubscribe"),
                cluster.kube.get(PDBS, ns, "sup-unsubscribe")]
    for child in children:
        owner = child["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
            ("UnsubscribeStore", "sup", uid, True)

    status = body["status"]
    assert status["observedGeneration"] == body["metadata"]["generation"]
    assert (status["storage"], status["durability"]) == ("postgres", "replicated")
    assert status["highlyAvailable"] is True and status["readyReplicas"] == 2
    assert status["signingKeySecret"] == "sup-signing-key"
    assert status["fingerprintKeySecret"] == "sup-fingerprint-key"
    assert status["endpoints"] == {"grpc": f"sup-unsubscribe.{ns}.svc:50061",
                                   "http": f"http://sup-unsubscribe-http.{ns}.svc:80",
                                   "publicBaseURL": "https://unsub.example.com"}
    assert status["configHash"] == dep["spec"]["template"]["metadata"]["annotations"][
        store_naming.CONFIG_HASH_ANNOTATION]
    assert conditions(body) == {"Ready": ("True", "Serving"),
                                "Progressing": ("False", "RolloutComplete"),
                                "StorageReady": ("True", "StoreReady"),
                                "Degraded": ("False", "AsExpected"),
                                "ApplyFailed": ("False", "Applied")}
    wanted = {"SigningKeyGenerated", "FingerprintKeyGenerated", "ReadyServing",
              "StorageReadyStoreReady"}
    wait_for(lambda: wanted <= {e["reason"] for e in cluster.kube.list(EVENTS, ns)}, 30,
             f"events {sorted(wanted)}")
    events = cluster.kube.list(EVENTS, ns)
    for event in events:  # what `kubectl describe unsubscribestore sup` lists
        assert (event["involvedObject"]["kind"], event["involvedObject"]["name"],
                event["involvedObject"]["uid"]) == ("UnsubscribeStore", "sup", uid)
    assert operator.metric("mailwarden_operator_signing_keys_generated_total") >= 1
    assert operator.metric("mailwarden_operator_fingerprint_keys_generated_total") >= 1


def test_a_missing_dsn_secret_is_reported_then_picked_up(cluster: Cluster,
                                                         operator: OperatorProcess) -> None:
    ns = "nodsn"
    cluster.kube.create(UNSUBSCRIBESTORES, ns, store_body(ns, "sup"))
    body = wait_condition(cluster, UNSUBSCRIBESTORES, ns, "sup", "StorageReady", "False",
                          "DSNSecretNotFound")
    assert conditions(body)["Ready"] == ("False", "DSNSecretNotFound")
    assert conditions(body)["Degraded"] == ("True", "DSNSecretNotFound")
    assert "pg-app" in condition(body, "Ready")["message"]
    assert cluster.kube.get(DEPLOYMENTS, ns, "sup-unsubscribe") is None
    wait_for(lambda: any(e["type"] == "Warning" and e["reason"] == "DegradedDSNSecretNotFound"
                         for e in cluster.kube.list(EVENTS, ns)), 30,
             "a DegradedDSNSecretNotFound Warning event")
    # A Secret without the key is reported as such; with it, the resync rolls the store out.
    cluster.kube.create(SECRETS, ns, secret(ns, "pg-app", dsn=DSN))
    wait_condition(cluster, UNSUBSCRIBESTORES, ns, "sup", "Ready", "False",
                   "DSNSecretKeyMissing")
    cluster.kube.merge_patch(SECRETS, ns, "pg-app", {"data": {
        "uri": base64.b64encode(DSN.encode()).decode()}})
    wait_condition(cluster, UNSUBSCRIBESTORES, ns, "sup", "Ready", "True")
    assert cluster.kube.get(DEPLOYMENTS, ns, "sup-unsubscribe") is not None


def test_a_users_signing_key_is_used_checked_and_never_written(
        cluster: Cluster, operator: OperatorProcess) -> None:
    ns = "ownkey"
    cluster.kube.create(SECRETS, ns, secret(ns, "own-key", current="too-short-key"))
    create_store(cluster, ns, signingKey={"secretName": "own-key"})
    body = wait_condition(cluster, UNSUBSCRIBESTORES, ns, "sup", "Ready", "False",
                          "SigningKeyInvalid")
    message = condition(body, "Ready")["message"]
    assert "own-key" in message and "too short" in message
    assert "too-short-key" not in message  # never the key itself
    assert cluster.kube.get(DEPLOYMENTS, ns, "sup-unsubscribe") is None
    good = "k" * 48
    cluster.kube.merge_patch(SECRETS, ns, "own-key", {"data": {
        "current": base64.b64encode(good.encode()).decode()}})
    wait_condition(cluster, UNSUBSCRIBESTORES, ns, "sup", "Ready", "True")
    dep = cluster.kube.get(DEPLOYMENTS, ns, "sup-unsubscribe")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["signing-key"]["secret"]["secretName"] == "own-key"
    assert cluster.kube.get(SECRETS, ns, "sup-signing-key") is None

    # Rotation: the user edits the Secret; the pods roll (new template), the key stays theirs.
    before = dep["spec"]["template"]["metadata"]["annotations"]
    cluster.kube.merge_patch(SECRETS, ns, "own-key", {"data": {
        "current": base64.b64encode(("n" * 48).encode()).decode(),
        "previous": base64.b64encode(good.encode()).decode()}})
    wait_for(lambda: cluster.kube.get(DEPLOYMENTS, ns, "sup-unsubscribe")["spec"]["template"]
             ["metadata"]["annotations"][store_naming.CONFIG_HASH_ANNOTATION]
             != before[store_naming.CONFIG_HASH_ANNOTATION], 30, "pods rolled on rotation")
    writes = secret_writes(cluster, ns)
    assert sorted(writes) == [f"PATCH /api/v1/namespaces/{ns}/secrets/own-key"] * 2 + \
        [f"POST /api/v1/namespaces/{ns}/secrets"] * 3, \
        "the test's own writes and the fingerprint key: never a user's Secret"


def test_a_users_fingerprint_key_is_checked_never_written_and_shared(
        cluster: Cluster, operator: OperatorProcess) -> None:
    ns = "ownfp"
    cluster.kube.create(CONFIGMAPS, ns, model_configmap(ns))
    cluster.kube.create(SECRETS, ns, secret(ns, "own-fp", key="short"))
    create_store(cluster, ns, fingerprintKey={"secretName": "own-fp"})
    cluster.kube.create(SPAMPOLICIES, ns, example_policy(
        ns, "mail", unsubscribeStoreRef={"name": "sup"}))
    body = wait_condition(cluster, UNSUBSCRIBESTORES, ns, "sup", "Ready", "False",
                          "FingerprintKeyInvalid")
    message = condition(body, "Ready")["message"]
    assert "own-fp" in message and "at least 32" in message and "short" not in message
    assert cluster.kube.get(DEPLOYMENTS, ns, "sup-unsubscribe") is None
    # The filter pods are not given a key they would refuse: they classify meanwhile.
    wait_condition(cluster, SPAMPOLICIES, ns, "mail", "Ready", "True")
    filter_args = cluster.kube.get(DEPLOYMENTS, ns, naming.workload_name("mail"))[
        "spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--suppression-store" in filter_args
    assert "--suppression-key-file" not in filter_args

    cluster.kube.merge_patch(SECRETS, ns, "own-fp", {"data": {
        "key": base64.b64encode(("ab" * 32).encode()).decode()}})
    wait_condition(cluster, UNSUBSCRIBESTORES, ns, "sup", "Ready", "True")
    store_pod = cluster.kube.get(DEPLOYMENTS, ns, "sup-unsubscribe")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in store_pod["volumes"]}
    assert volumes["fingerprint-key"]["secret"]["secretName"] == "own-fp"
    assert cluster.kube.get(SECRETS, ns, "sup-fingerprint-key") is None

    def filter_key() -> str | None:
        pod = cluster.kube.get(DEPLOYMENTS, ns, naming.workload_name("mail"))["spec"][
            "template"]["spec"]
        return {v["name"]: v for v in pod["volumes"]}.get("suppression-key", {}).get(
            "secret", {}).get("secretName")
    assert wait_for(filter_key, 30, "filter pods given the store's key") == "own-fp"
    assert sorted(secret_writes(cluster, ns)) == \
        [f"PATCH /api/v1/namespaces/{ns}/secrets/own-fp"] + \
        [f"POST /api/v1/namespaces/{ns}/secrets"] * 3, \
        "the test's own writes and the signing key: never a user's fingerprint key"


def test_embedded_store_runs_one_pod_on_a_kept_claim(cluster: Cluster,
                                                     operator: OperatorProcess) -> None:
    ns = "embedded"
    cluster.kube.create(UNSUBSCRIBESTORES, ns, {
        "apiVersion": "mailwarden.dev/v1alpha1", "kind": "UnsubscribeStore",
        "metadata": {"name": "dev", "namespace": ns},
        "spec": {"storage": {"type": "embedded"}, "replicas": {"min": 1, "max": 1}}})
    body = wait_condition(cluster, UNSUBSCRIBESTORES, ns, "dev", "Ready", "True")
    assert body["status"]["highlyAvailable"] is False
    storage = condition(body, "StorageReady")
    assert storage["reason"] == "EmbeddedNotHighlyAvailable"
    assert "not highly available" in storage["message"]
    claim = cluster.kube.get(PVCS, ns, "dev-unsubscribe-data")
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "ownerReferences" not in claim["metadata"]
    dep = cluster.kube.get(DEPLOYMENTS, ns, "dev-unsubscribe")
    assert dep["spec"]["strategy"] == {"type": "Recreate"} and dep["spec"]["replicas"] == 1
    assert cluster.kube.get(HPAS, ns, "dev-unsubscribe") is None
    assert cluster.kube.get(PDBS, ns, "dev-unsubscribe") is None
    # Nobody scales an SQLite store to two writers: the operator puts it back.
    cluster.kube.merge_patch(DEPLOYMENTS, ns, "dev-unsubscribe", {"spec": {"replicas": 3}})
    wait_for(lambda: cluster.kube.get(DEPLOYMENTS, ns, "dev-unsubscribe")["spec"]
             ["replicas"] == 1, 30, "replicas back to 1")


def test_a_spampolicy_follows_its_store_without_waiting_for_it(
        cluster: Cluster, operator: OperatorProcess) -> None:
    ns = "wired"
    cluster.kube.create(CONFIGMAPS, ns, model_configmap(ns))
    cluster.kube.create(SPAMPOLICIES, ns, example_policy(
        ns, "mail", unsubscribeStoreRef={"name": "sup"}))
    # No store yet: the policy is served anyway, and says why suppressions are missing.
    body = wait_condition(cluster, SPAMPOLICIES, ns, "mail", "SuppressionReady", "False",
                          "StoreNotFound")
    body = wait_condition(cluster, SPAMPOLICIES, ns, "mail", "Ready", "True")
    target = f"sup-unsubscribe.{ns}.svc:50061"
    assert body["status"]["suppressionStore"] == target
    filter_dep = cluster.kube.get(DEPLOYMENTS, ns, naming.workload_name("mail"))
    args = filter_dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--suppression-store"):][:2] == ["--suppression-store", target]
    template = filter_dep["spec"]["template"]

    create_store(cluster, ns)
    wait_condition(cluster, SPAMPOLICIES, ns, "mail", "SuppressionReady", "True",
                   "StoreReady")
    # The filter pods roll onto the store's fingerprint key (the shared index from the
    # store's fingerprint snapshot), once, when the operator has created it.
    key = cluster.kube.get(SECRETS, ns, "sup-fingerprint-key")

    def keyed_template() -> dict | None:
        tpl = cluster.kube.get(DEPLOYMENTS, ns, naming.workload_name("mail"))["spec"][
            "template"]
        return tpl if "--suppression-key-file" in tpl["spec"]["containers"][0]["args"] \
            else None
    template = wait_for(keyed_template, 30, "filter pods given the store's fingerprint key")
    args = template["spec"]["containers"][0]["args"]
    assert args[args.index("--suppression-key-file") + 1] == \
        "/etc/mailwarden/suppression-key/key"
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["suppression-key"]["secret"]["secretName"] == "sup-fingerprint-key"
    assert template["metadata"]["annotations"][naming.SUPPRESSION_KEY_ANNOTATION] == \
        key["metadata"]["resourceVersion"]
    # That roll is done before the store is broken below: Ready is about the store alone.
    wait_for(lambda: (lambda b: b if condition(b, "Ready")["status"] == "True"
                      and condition(b, "Progressing")["status"] == "False" else None)(
        cluster.kube.get(SPAMPOLICIES, ns, "mail")), 60, "the roll onto the key done")

    # The database goes away: the store pods fail /readyz (no ready pod).
    dep = cluster.kube.get(DEPLOYMENTS, ns, "sup-unsubscribe")
    cluster.kube.merge_patch(DEPLOYMENTS, ns, "sup-unsubscribe", {"status": {
        "observedGeneration": dep["metadata"]["generation"], "readyReplicas": 0,
        "availableReplicas": 0}}, subresource="status")
    store = wait_condition(cluster, UNSUBSCRIBESTORES, ns, "sup", "StorageReady", "False",
                           "StoreNotReady")
    assert conditions(store)["Degraded"] == ("True", "StoreNotReady")
    # kopf posts Events from its own queue, after the status patch: wait for it.
    wait_for(lambda: any(e["type"] == "Warning" and e["reason"] == "StorageReadyStoreNotReady"
                         for e in cluster.kube.list(EVENTS, ns)), 30,
             "a StorageReadyStoreNotReady Warning event")
    policy = wait_condition(cluster, SPAMPOLICIES, ns, "mail", "SuppressionReady", "False",
                            "StoreNotReady")
    assert "not Ready" in condition(policy, "SuppressionReady")["message"]
    assert condition(policy, "Ready")["status"] == "True"  # classification goes on

    cluster.kube.delete(UNSUBSCRIBESTORES, ns, "sup")
    wait_condition(cluster, SPAMPOLICIES, ns, "mail", "SuppressionReady", "False",
                   "StoreNotFound")
    # The store going (its key stays) did not roll the filter pods.
    assert cluster.kube.get(DEPLOYMENTS, ns, naming.workload_name("mail"))["spec"][
        "template"] == template


def test_update_restart_and_resync_never_touch_the_key(cluster: Cluster,
                                                       operator: OperatorProcess) -> None:
    ns = "restart"
    create_store(cluster, ns)
    wait_condition(cluster, UNSUBSCRIBESTORES, ns, "sup", "Ready", "True")
    key = cluster.kube.get(SECRETS, ns, "sup-signing-key")
    fp_key = cluster.kube.get(SECRETS, ns, "sup-fingerprint-key")

    cluster.kube.merge_patch(UNSUBSCRIBESTORES, ns, "sup", {"spec": {
        "replicas": {"min": 2, "max": 8}, "server": {"logLevel": "debug"}}})
    wait_for(lambda: cluster.kube.get(HPAS, ns, "sup-unsubscribe")["spec"]["maxReplicas"]
             == 8, 30, "HPA updated")
    body = wait_for(lambda: (lambda b: b if b["status"].get("observedGeneration") ==
                             b["metadata"]["generation"] and condition(b, "Ready")["status"]
                             == "True" and condition(b, "Progressing")["status"] == "False"
                             else None)(get_store(cluster, ns)), 60, "update rolled out")
    dep = cluster.kube.get(DEPLOYMENTS, ns, "sup-unsubscribe")
    assert dep["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "debug"
    assert body["status"]["configHash"] == dep["metadata"]["annotations"][
        store_naming.CONFIG_HASH_ANNOTATION]

    operator.stop()
    operator.start()
    wait_for(lambda: operator.metric("mailwarden_operator_store_reconciles_total",
                                     trigger="resync") >= 2 * len(
        cluster.kube.list(UNSUBSCRIBESTORES, None)), 90, "resyncs after the restart")
    for before in (key, fp_key):
        after = cluster.kube.get(SECRETS, ns, before["metadata"]["name"])
        assert after["data"] == before["data"]
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert secret_writes(cluster, ns) == [f"POST /api/v1/namespaces/{ns}/secrets"] * 3


def test_a_no_op_reconcile_writes_nothing(cluster: Cluster, operator: OperatorProcess) -> None:
    ns = "idle"
    create_store(cluster, ns)
    wait_condition(cluster, UNSUBSCRIBESTORES, ns, "sup", "Ready", "True")
    time.sleep(2)  # let the echo of the last status write settle
    stores = len(cluster.kube.list(UNSUBSCRIBESTORES, None))
    policies = len(cluster.kube.list(SPAMPOLICIES, None))
    mark = len(cluster.writes())
    store_before = operator.metric("mailwarden_operator_store_reconciles_total",
                                   trigger="resync")
    policy_before = operator.metric("mailwarden_operator_reconciles_total", trigger="resync")
    # Two full resync rounds over every store (healthy, broken, embedded, own key) and
    # every SpamPolicy, however long the machine takes.
    wait_for(lambda: operator.metric("mailwarden_operator_store_reconciles_total",
                                     trigger="resync") - store_before >= 2 * stores
             and operator.metric("mailwarden_operator_reconciles_total", trigger="resync")
             - policy_before >= 2 * policies, 90, "two resync rounds")
    writes = cluster.writes()[mark:]
    assert writes == [], f"a no-op reconcile wrote: {writes}"


def test_delete_keeps_the_key_and_leaves_children_to_garbage_collection(
        cluster: Cluster, operator: OperatorProcess) -> None:
    ns = "delete"
    created = create_store(cluster, ns)
    wait_condition(cluster, UNSUBSCRIBESTORES, ns, "sup", "Ready", "True")
    cluster.kube.delete(UNSUBSCRIBESTORES, ns, "sup")
    assert get_store(cluster, ns) is None  # no finalizer
    time.sleep(1)  # the deletion's own watch events
    mark = len(cluster.writes())
    before = operator.metric("mailwarden_operator_store_reconciles_total", trigger="resync")
    stores = len(cluster.kube.list(UNSUBSCRIBESTORES, None))
    wait_for(lambda: operator.metric("mailwarden_operator_store_reconciles_total",
                                     trigger="resync") - before >= stores + 1, 60,
             "a full resync round")
    assert [w for w in cluster.writes()[mark:] if f"/namespaces/{ns}/" in w] == []
    dep = cluster.kube.get(DEPLOYMENTS, ns, "sup-unsubscribe")
    assert dep["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    for name in ("sup-signing-key", "sup-fingerprint-key"):
        kept = cluster.kube.get(SECRETS, ns, name)
        assert kept is not None and "ownerReferences" not in kept["metadata"]


def test_the_charts_rbac_allows_every_request_the_operator_made(cluster: Cluster) -> None:
    """RBAC sufficiency for everything exercised above (both resource kinds, Secrets,
    claims, Events, kopf's peering and watches), judged by the chart's default rules."""
    from tests.chart.test_chart import by_kind, render

    rules = [rule for doc in by_kind(render(), "ClusterRole") for rule in doc["rules"]]

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(group in rule["apiGroups"] and resource in rule["resources"]
                   and verb in rule["verbs"] for rule in rules)

    # Discovery (/api, /apis/<group>/<version>) is not a resource request: every
    # authenticated client may do it (system:discovery).
    made = {(r.group, r.resource, r.verb) for r in cluster.operator_requests()
            if r.group is not None and r.plural is not None}
    assert ("", "secrets", "create") in made and ("", "secrets", "get") in made
    missing = sorted(m for m in made if not allowed(*m))
    assert missing == [], f"the chart's ClusterRole does not allow: {missing}"
