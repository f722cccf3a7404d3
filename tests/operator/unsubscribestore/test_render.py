"""The pure renderers of an UnsubscribeStore's children: one test group per kind, every
rendered object validated against the Kubernetes OpenAPI schemas (strict) for 1.30 and the
newest version, and the rendered command lines parsed by the real `mailwarden` CLI."""

from __future__ import annotations

import base64
import copy
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailwarden.cli import build_parser
from mailwarden.tokens import generate_key, load_keyring
from mailwarden_operator.common.render import RenderSettings
from mailwarden_operator.spampolicy.render.deployment import render_deployment, server_args
from mailwarden_operator.spampolicy.spec import with_defaults as policy_defaults
from mailwarden_operator.unsubscribestore import naming as store_naming
from mailwarden_operator.unsubscribestore.reconcile import (
    StoreProblem,
    check_fingerprint_key_secret,
    check_signing_key_secret,
)
from mailwarden_operator.unsubscribestore.render.deployment import (
    config_hash,
    render_store_deployment,
)
from mailwarden_operator.unsubscribestore.render.hpa import render_store_hpa
from mailwarden_operator.unsubscribestore.render.networkpolicy import (
    networkpolicy_wanted,
    render_store_networkpolicy,
)
from mailwarden_operator.unsubscribestore.render.pdb import render_store_pdb
from mailwarden_operator.unsubscribestore.render.pvc import render_data_claim, wants_claim
from mailwarden_operator.unsubscribestore.render.secret import (
    render_fingerprint_key_secret,
    render_signing_key_secret,
)
from mailwarden_operator.unsubscribestore.render.servicemonitor import render_store_servicemonitor
from mailwarden_operator.unsubscribestore.render.services import (
    render_grpc_service,
    render_http_service,
)
from mailwarden_operator.unsubscribestore.spec import with_defaults
from tests.operator.k8s_schemas import validate_k8s

REPO = Path(__file__).resolve().parents[3]
SETTINGS = RenderSettings(default_image="registry.example/mailwarden:1.2.3")
VERSIONS = {"signing-key": "101", "dsn": "102", "fingerprint-key": "103"}


def store(**spec: Any) -> dict[str, Any]:
    body = {"apiVersion": "mailwarden.dev/v1alpha1", "kind": "UnsubscribeStore",
            "metadata": {"name": "sup", "namespace": "team", "uid": "0a0b-uid",
                         "generation": 2},
            "spec": {"storage": {"type": "postgres",
                                 "postgres": {"dsnSecretRef": {"name": "pg-app"}}}}}
    body["spec"].update(copy.deepcopy(spec))
    body["spec"] = with_defaults(body["spec"])
    return body


def embedded(volume: str = "persistentVolumeClaim", **spec: Any) -> dict[str, Any]:
    return store(storage={"type": "embedded", "embedded": {"volume": volume, "size": "2Gi"}},
                 replicas={"min": 1, "max": 1}, **spec)


FULL = dict(
    durability="replicated", image="registry.example/custom:2",
    resubscribe={"secretRef": {"name": "resub", "key": "credential"}},
    oneClick={"tokenMaxAgeDays": 90},
    http={"publicBaseURL": "https://unsub.example.com",
          "service": {"type": "LoadBalancer", "port": 443,
                      "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type":
                                      "nlb"}}},
    replicas={"min": 3, "max": 9}, autoscaling={"cpuUtilization": 60},
    disruption={"maxUnavailable": "34%"},
    resources={"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    server={"drainSeconds": 8, "graceSeconds": 12, "preStopSeconds": 6,
            "readinessIntervalSeconds": 3, "logLevel": "warning"},
    monitoring={"interval": "15s", "labels": {"release": "prometheus"}},
    networkPolicy={"grpcClients": [{"namespaceSelector": {"matchLabels": {"team": "senders"}},
                                    "podSelector": {"matchLabels": {"app": "mailer"}}}],
                   "metricsFrom": [{"namespaceSelector": {"matchLabels": {
                       "kubernetes.io/metadata.name": "monitoring"}}}]},
    scheduling={"nodeSelector": {"pool": "mail"}, "priorityClassName": "critical",
                "tolerations": [{"key": "mail", "operator": "Exists",
                                 "effect": "NoSchedule"}]},
    imagePullSecrets=[{"name": "registry-creds"}], serviceAccountName="mail-puller")


def children(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = [render_signing_key_secret(body, generate_key()),
           render_fingerprint_key_secret(body, secrets.token_hex(32)),
           render_store_deployment(body, SETTINGS, VERSIONS),
           render_grpc_service(body), render_http_service(body),
           render_store_servicemonitor(body), render_store_networkpolicy(body)]
    if wants_claim(body):
        out.append(render_data_claim(body))
    if body["spec"]["storage"]["type"] == "postgres":
        out += [render_store_hpa(body), render_store_pdb(body)]
    return out


VARIANTS = {"postgres-defaults": lambda: store(), "postgres-every-field": lambda: store(**FULL),
            "embedded-pvc": lambda: embedded(), "embedded-emptydir": lambda: embedded("emptyDir"),
            "no-one-click": lambda: store(oneClick={"enabled": False})}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_is_valid_for_kubernetes(variant: str) -> None:
    for obj in children(VARIANTS[variant]()):
        validate_k8s(obj)
        meta = obj["metadata"]
        assert meta["namespace"] == "team"
        assert meta["labels"][store_naming.STORE_LABEL] == "sup"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "mailwarden-operator"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_owner_references_everywhere_but_on_the_key_and_the_data(variant: str) -> None:
    """The signing key and an embedded store's data outlive the store (deleting and
    re-creating it must not invalidate links already sent, nor lose suppressions)."""
    for obj in children(VARIANTS[variant]()):
        if obj["kind"] in ("Secret", "PersistentVolumeClaim"):
            assert "ownerReferences" not in obj["metadata"]
            continue
        ref = obj["metadata"]["ownerReferences"][0]
        assert (ref["apiVersion"], ref["kind"], ref["name"], ref["uid"], ref["controller"],
                ref["blockOwnerDeletion"]) == ("mailwarden.dev/v1alpha1", "UnsubscribeStore",
                                               "sup", "0a0b-uid", True, True)


def test_renderers_are_pure() -> None:
    body = store(**FULL)
    snapshot = copy.deepcopy(body)
    first = render_store_deployment(body, SETTINGS, VERSIONS)
    assert render_store_deployment(body, SETTINGS, VERSIONS) == first
    assert [render_grpc_service(body), render_http_service(body), render_store_hpa(body)] == \
        [render_grpc_service(body), render_http_service(body), render_store_hpa(body)]
    assert body == snapshot


# -- signing-key Secret ---------------------------------------------------------------------

def test_the_generated_signing_key_is_what_the_server_loads(tmp_path: Path) -> None:
    key = generate_key()
    assert len(base64.urlsafe_b64decode(key + "=")) == 32  # 32 random bytes, base64url text
    assert generate_key() != key
    secret = render_signing_key_secret(store(), key)
    assert secret["metadata"]["name"] == "sup-signing-key"
    assert secret["type"] == "Opaque" and "immutable" not in secret  # editable: rotation
    assert secret["metadata"]["labels"][store_naming.ROLE_LABEL] == "signing-key"
    check_signing_key_secret(secret)
    # Laid out as the kubelet mounts it, the server's own loader accepts it.
    for name, value in secret["data"].items():
        (tmp_path / name).write_bytes(base64.b64decode(value))
    assert load_keyring(key_dir=tmp_path, env={}).current is not None
    named = render_signing_key_secret(store(signingKey={"secretName": "my-key"}), key)
    assert named["metadata"]["name"] == "my-key"


@pytest.mark.parametrize("data, problem", [
    ({}, "has no (base64) key 'current'"),
    ({"current": base64.b64encode(b"Zq9xKw").decode()}, "too short"),
    ({"current": base64.b64encode(b"a" * 40 + b"\n" + b"b" * 40).decode()},
     "must hold exactly one key"),
    ({"current": base64.b64encode(b"c" * 40).decode(),
      "previous": base64.b64encode(b"d" * 40 + b"\nZq9xKw\n").decode()}, "too short"),
    ({"current": base64.b64encode(b"c" * 40).decode(),
      "previous": base64.b64encode(b"d" * 40 + b" retired=yesterday\n").decode()},
     "retired= must be a date"),
], ids=["missing", "short", "two-current", "short-previous", "bad-retired-date"])
def test_unusable_signing_keys_are_refused_without_revealing_them(data, problem) -> None:
    secret = {"metadata": {"name": "k"}, "data": data}
    with pytest.raises(StoreProblem) as caught:
        check_signing_key_secret(secret)
    assert caught.value.reason == "SigningKeyInvalid"
    assert problem in caught.value.message
    for value in data.values():
        for line in base64.b64decode(value).splitlines():
            assert line.decode() not in caught.value.message


def test_previous_keys_are_accepted() -> None:
    check_signing_key_secret({"metadata": {"name": "k"}, "data": {
        "current": base64.b64encode(generate_key().encode() + b"\n").decode(),
        "previous": base64.b64encode(f"{generate_key()}\n{generate_key()}\n".encode())
        .decode()}})
    # as `mailwarden token rotate` writes them
    check_signing_key_secret({"metadata": {"name": "k"}, "data": {
        "current": base64.b64encode(generate_key().encode()).decode(),
        "previous": base64.b64encode(f"{generate_key()} retired=2026-01-01\n".encode())
        .decode()}})


# -- Deployment -----------------------------------------------------------------------------

def _pod(body: dict[str, Any]) -> dict[str, Any]:
    return render_store_deployment(body, SETTINGS, VERSIONS)["spec"]["template"]["spec"]


def _parse(args: list[str]):
    return build_parser().parse_args(args)


def test_the_migration_runs_first_with_the_servers_storage_flags() -> None:
    for body in (store(**FULL), embedded()):
        pod = _pod(body)
        migrate, server = pod["initContainers"][0], pod["containers"][0]
        assert migrate["name"] == "migrate" and migrate["image"] == server["image"]
        m, s = _parse(migrate["args"]), _parse(server["args"])
        assert m.migrate_only is True and not m.no_migrate
        assert s.no_migrate is True and not s.migrate_only  # the init container migrated
        for flag in ("store", "dsn_file", "sqlite_path", "durability"):
            assert getattr(m, flag) == getattr(s, flag), flag
        # Both see the database at the same place.
        mounts = {v["mountPath"] for v in migrate["volumeMounts"]}
        assert mounts <= {v["mountPath"] for v in server["volumeMounts"]}
        assert migrate["securityContext"] == server["securityContext"]


def test_postgres_server_args_and_mounts() -> None:
    pod = _pod(store(**FULL))
    server = pod["containers"][0]
    args = _parse(server["args"])
    assert (args.store, args.durability) == ("postgres", "replicated")
    # Dual stack (issue 13 item 7): IPv6-only and dual-stack clusters reach the pods.
    assert args.grpc_address == "[::]:50061" and args.http_address == "[::]:8080"
    assert args.metrics_address == "[::]:9091"
    assert args.token_max_age_days == 90 and args.log_level == "warning"
    assert (args.readiness_interval, args.drain_seconds, args.grace_seconds) == (3, 8, 12)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}

    def file_of(path: str) -> tuple[str, str]:
        """(Secret name, key) that the kubelet puts at `path`."""
        directory, filename = path.rsplit("/", 1)
        secret = volumes[mounts[directory]["name"]]["secret"]
        item = next(i for i in secret["items"] if i["path"] == filename)
        return secret["secretName"], item["key"]

    assert file_of(args.dsn_file) == ("pg-app", "dsn")
    assert file_of(args.admin_token_file) == ("resub", "credential")
    key_volume = volumes[mounts[args.signing_key_dir]["name"]]["secret"]
    assert key_volume["secretName"] == "sup-signing-key"
    assert "items" not in key_volume  # `current` and, after a rotation, `previous`
    for volume in volumes.values():
        if "secret" in volume:
            assert volume["secret"]["defaultMode"] == 0o440
    assert all(m.get("readOnly") for p, m in mounts.items()
               if p not in ("/tmp", store_naming.FINGERPRINT_DIR))
    assert server["image"] == "registry.example/custom:2"


def test_one_click_can_be_turned_off() -> None:
    pod = _pod(store(oneClick={"enabled": False}))
    args = _parse(pod["containers"][0]["args"])
    assert args.no_one_click is True and args.signing_key_dir is None
    assert "signing-key" not in {v["name"] for v in pod["volumes"]}


def test_probes_shutdown_and_spreading() -> None:
    dep = render_store_deployment(store(**FULL), SETTINGS, VERSIONS)
    pod = dep["spec"]["template"]["spec"]
    server = pod["containers"][0]
    # Liveness never depends on the database (an outage must not restart every pod);
    # readiness is the store's own Ready (durability included).
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert server["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {
        "grpc": 50061, "http": 8080, "metrics": 9091}
    assert server["lifecycle"]["preStop"] == {"sleep": {"seconds": 6}}
    assert pod["terminationGracePeriodSeconds"] > 6 + 8 + 12
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert pod["nodeSelector"] == {"pool": "mail"} and pod["priorityClassName"] == "critical"
    strategy = dep["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert dep["spec"]["replicas"] == 3


def test_restricted_pod_security() -> None:
    for body in (store(), embedded()):
        pod = _pod(body)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["initContainers"] + pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
        assert "hostNetwork" not in pod and "hostPath" not in str(pod["volumes"])


def test_embedded_store_is_one_pod_on_its_claim() -> None:
    body = embedded()
    dep = render_store_deployment(body, SETTINGS, VERSIONS)
    pod = dep["spec"]["template"]["spec"]
    # Never two SQLite writers on the file, not even during an update.
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert dep["spec"]["replicas"] == 1
    args = _parse(pod["containers"][0]["args"])
    assert (args.store, args.durability) == ("sqlite", "local")
    assert args.sqlite_path == "/var/lib/mailwarden/unsubscribe.db"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "sup-unsubscribe-data"}
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    claim = render_data_claim(body)
    assert claim["metadata"]["name"] == "sup-unsubscribe-data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    throwaway = _pod(embedded("emptyDir"))
    assert {v["name"]: v for v in throwaway["volumes"]}["data"]["emptyDir"] == \
        {"sizeLimit": "2Gi"}
    assert not wants_claim(embedded("emptyDir")) and not wants_claim(store())


def test_a_changed_secret_or_setting_rolls_the_pods() -> None:
    body = store()
    base = render_store_deployment(body, SETTINGS, VERSIONS)
    hash_of = lambda d: d["spec"]["template"]["metadata"]["annotations"][  # noqa: E731
        store_naming.CONFIG_HASH_ANNOTATION]
    assert hash_of(base) == base["metadata"]["annotations"][store_naming.CONFIG_HASH_ANNOTATION]
    rotated = render_store_deployment(body, SETTINGS, {**VERSIONS, "signing-key": "205"})
    assert rotated["spec"]["template"]["metadata"]["annotations"][
        store_naming.SECRET_VERSIONS_ANNOTATION] == "dsn=102,fingerprint-key=103,signing-key=205"
    assert hash_of(rotated) != hash_of(base)
    assert hash_of(render_store_deployment(store(server={"logLevel": "debug"}), SETTINGS,
                                           VERSIONS)) != hash_of(base)
    # Replica bounds belong to the HPA: not a template change.
    assert hash_of(render_store_deployment(store(replicas={"min": 2, "max": 20}), SETTINGS,
                                           VERSIONS)) == hash_of(base)
    assert config_hash({"a": 1}) == config_hash({"a": 1}) != config_hash({"a": 2})


# -- Services, HPA, PDB, ServiceMonitor -------------------------------------------------------

def test_services() -> None:
    body = store(**FULL)
    grpc, http = render_grpc_service(body), render_http_service(body)
    assert grpc["metadata"]["name"] == "sup-unsubscribe" and grpc["spec"]["type"] == "ClusterIP"
    assert {p["name"]: p["port"] for p in grpc["spec"]["ports"]} == {"grpc": 50061,
                                                                     "metrics": 9091}
    assert http["metadata"]["name"] == "sup-unsubscribe-http"
    assert http["spec"]["type"] == "LoadBalancer"
    assert http["spec"]["ports"] == [{"name": "http", "port": 443, "targetPort": "http",
                                      "protocol": "TCP", "appProtocol": "http"}]
    assert http["metadata"]["annotations"][
        "service.beta.kubernetes.io/aws-load-balancer-type"] == "nlb"
    for svc in (grpc, http):
        assert svc["spec"]["selector"] == store_naming.selector_labels("sup")
    assert store_naming.grpc_target("sup", "team") == "sup-unsubscribe.team.svc:50061"


def test_the_http_service_carries_exactly_the_specs_annotations() -> None:
    # Removal of a key dropped from the spec is server-side apply's (tests/operator_cluster/
    # test_apply.py shows it on a real API server).
    assert "annotations" not in render_http_service(store())["metadata"]
    assert render_http_service(store(**FULL))["metadata"]["annotations"] == \
        FULL["http"]["service"]["annotations"]


def test_hpa_pdb_and_servicemonitor() -> None:
    body = store(**FULL)
    hpa = render_store_hpa(body)["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 9)
    assert hpa["scaleTargetRef"]["name"] == "sup-unsubscribe"
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    pdb = render_store_pdb(body)["spec"]
    assert pdb["maxUnavailable"] == "34%" and pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    sm = render_store_servicemonitor(body)
    assert sm["spec"]["selector"]["matchLabels"][store_naming.SERVICE_ROLE_LABEL] == "main"
    assert render_grpc_service(body)["metadata"]["labels"][
        store_naming.SERVICE_ROLE_LABEL] == "main"
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "interval": "15s",
                                        "path": "/metrics"}]
    assert sm["metadata"]["labels"]["release"] == "prometheus"


def test_networkpolicy_admits_only_filter_pods_and_named_clients_to_grpc() -> None:
    """Issue 20 item 8: anyone who reached the gRPC port exported every address."""
    default = render_store_networkpolicy(store())
    assert networkpolicy_wanted(store())
    spec = default["spec"]
    assert spec["podSelector"]["matchLabels"] == store_naming.selector_labels("sup")
    assert spec["policyTypes"] == ["Ingress"]
    grpc_rule, http_rule, metrics_rule = spec["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    (filters,) = grpc_rule["from"]
    # the selector matches the filter pods the SpamPolicy renderer makes
    pod_labels = render_deployment(_policy(), "h1", SETTINGS)["spec"]["template"][
        "metadata"]["labels"]
    assert filters["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert "namespaceSelector" not in filters  # this namespace only
    assert http_rule == {"ports": [{"port": "http", "protocol": "TCP"}]}  # the internet
    assert "from" not in metrics_rule
    container_ports = {p["name"] for p in render_store_deployment(store(), SETTINGS, VERSIONS)[
        "spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {"grpc", "http", "metrics"} <= container_ports  # the named ports exist

    full = render_store_networkpolicy(store(**FULL))["spec"]["ingress"]
    assert full[0]["from"][1]["podSelector"] == {"matchLabels": {"app": "mailer"}}
    assert full[2]["from"] == FULL["networkPolicy"]["metricsFrom"]
    assert not networkpolicy_wanted(store(networkPolicy={"enabled": False}))


# -- SpamPolicy → store ---------------------------------------------------------------------

def _policy(**spec: Any) -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "spampolicy.yaml").read_text())
    body["metadata"] = {"name": "mail", "namespace": "team", "uid": "u"}
    body["spec"].update(spec)
    body["spec"] = policy_defaults(body["spec"])
    return body


def test_a_policy_with_unsubscribe_store_ref_passes_the_store_to_the_filter_pods() -> None:
    dep = render_deployment(_policy(unsubscribeStoreRef={"name": "sup"}), "h1", SETTINGS)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    i = args.index("--suppression-store")
    assert args[i:i + 2] == ["--suppression-store", "sup-unsubscribe.team.svc:50061"]
    validate_k8s(dep)
    plain = render_deployment(_policy(), "h1", SETTINGS)
    assert "--suppression-store" not in plain["spec"]["template"]["spec"]["containers"][0][
        "args"]
    assert "--suppression-store" not in server_args(_policy()["spec"])


def test_the_rendered_filter_args_are_what_mailwarden_serve_accepts() -> None:
    """Once `mailwarden serve` has `--suppression-store` (added to the filter server
    separately), the rendered command line must parse; skipped until then."""
    import argparse

    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = subcommands.choices["serve"]
    if "--suppression-store" not in serve._option_string_actions:
        pytest.skip("`mailwarden serve` has no --suppression-store yet (the filter server "
                    "wiring lands separately); this test runs once it does")
    dep = render_deployment(_policy(unsubscribeStoreRef={"name": "sup"}), "h1", SETTINGS)
    args = parser.parse_args(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "sup-unsubscribe.team.svc:50061" in vars(args).values()


# -- TLS on the store's gRPC port (issue 20 item 8) ------------------------------------------

TLS = {"secretName": "sup-tls", "requireClientCert": True,
       "adminClients": ["importer", "exporter.jobs"]}


def test_a_tls_store_serves_grpc_from_its_secret() -> None:
    body = store(tls=TLS)
    pod = _pod(body)
    server = pod["containers"][0]
    args = _parse(server["args"])
    assert args.tls_dir is not None and args.require_client_cert is True
    assert args.admin_client == ["importer", "exporter.jobs"]
    mount = next(m for m in server["volumeMounts"] if m["mountPath"] == str(args.tls_dir))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"] == {"secretName": "sup-tls", "defaultMode": 0o440}
    assert mount["readOnly"] is True
    # The migration never talks gRPC: it gets no certificate.
    assert all(m["name"] != mount["name"] for m in pod["initContainers"][0]["volumeMounts"])
    # The kubelet probes the plaintext HTTP port, which TLS on gRPC leaves alone.
    assert server["readinessProbe"]["httpGet"]["port"] == "http"
    validate_k8s(render_store_deployment(body, SETTINGS, VERSIONS))
    plain = _parse(_pod(store())["containers"][0]["args"])
    assert plain.tls_dir is None and not plain.require_client_cert and not plain.admin_client
    # Server-side TLS only: no client certificates asked for.
    one_way = _parse(_pod(store(tls={"secretName": "sup-tls"}))["containers"][0]["args"])
    assert one_way.tls_dir is not None and not one_way.require_client_cert


def test_a_renewed_certificate_does_not_roll_the_store() -> None:
    """The server reloads rotated files itself (mailwarden/tls.py): the template, and so
    the pods, stay as they are when only the Secret's content changes."""
    before = render_store_deployment(store(tls=TLS), SETTINGS, VERSIONS)
    after = render_store_deployment(store(tls=TLS), SETTINGS, VERSIONS)
    assert before == after
    assert "tls" not in before["spec"]["template"]["metadata"]["annotations"][
        store_naming.SECRET_VERSIONS_ANNOTATION]


def test_admin_clients_need_client_certificates() -> None:
    from mailwarden_operator.unsubscribestore.spec import spec_errors
    bad = store(tls={"secretName": "sup-tls", "adminClients": ["importer"]})
    assert any("tls.adminClients" in e for e in spec_errors(bad["spec"], "sup"))
    assert spec_errors(store(tls=TLS)["spec"], "sup") == []


def _filter_pod(store_body: dict[str, Any] | None, **spec: Any) -> dict[str, Any]:
    from mailwarden_operator.spampolicy.render.deployment import store_client_tls_secret
    policy = _policy(unsubscribeStoreRef={"name": "sup"}, **spec)
    dep = render_deployment(policy, "h1", SETTINGS,
                            store_client_tls_secret(policy, store_body))
    validate_k8s(dep)
    return dep["spec"]["template"]["spec"]


def test_filter_pods_connect_to_a_tls_store_with_its_client_secret() -> None:
    from mailwarden_operator.spampolicy import naming as policy_naming
    pod = _filter_pod(store(tls=TLS))
    container = pod["containers"][0]
    args = _parse(container["args"])
    assert args.suppression_store == "sup-unsubscribe.team.svc:50061"
    assert str(args.suppression_store_tls_dir) == policy_naming.SUPPRESSION_TLS_MOUNT
    mount = next(m for m in container["volumeMounts"]
                 if m["mountPath"] == policy_naming.SUPPRESSION_TLS_MOUNT)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    # Optional: a Secret created after the policy must not keep the pods from classifying.
    assert volume["secret"] == {"secretName": "sup-unsubscribe-client-tls",
                                "defaultMode": 0o440, "optional": True}
    named = _filter_pod(store(tls={**TLS, "clientSecretName": "filter-client"}))
    assert next(v for v in named["volumes"] if v["name"] == mount["name"])["secret"][
        "secretName"] == "filter-client"
    # The filter's own serving TLS (spec.tls) and the store's are separate mounts.
    both = _filter_pod(store(tls=TLS), tls={"secretName": "filter-tls"})
    assert {v["secret"]["secretName"] for v in both["volumes"] if "secret" in v} == \
        {"filter-tls", "sup-unsubscribe-client-tls"}


def test_filter_pods_of_a_plaintext_or_missing_store_connect_in_plaintext() -> None:
    for store_body in (store(), None):
        pod = _filter_pod(store_body)
        args = _parse(pod["containers"][0]["args"])
        assert args.suppression_store == "sup-unsubscribe.team.svc:50061"
        assert args.suppression_store_tls_dir is None
        assert all("secret" not in v for v in pod["volumes"])
    # No reference: nothing about the store at all, whatever store is passed.
    from mailwarden_operator.spampolicy.render.deployment import store_client_tls_secret
    assert store_client_tls_secret(_policy(), store(tls=TLS)) is None


# -- the suppression fingerprint key (issue 15) -----------------------------------------------


def test_the_generated_fingerprint_key_is_what_the_store_and_the_filter_load(
        tmp_path: Path) -> None:
    from mailwarden.fingerprints import FingerprintKey
    secret = render_fingerprint_key_secret(store(), secrets.token_hex(32))
    assert secret["metadata"]["name"] == "sup-fingerprint-key"
    assert secret["type"] == "Opaque" and "ownerReferences" not in secret["metadata"]
    assert secret["metadata"]["labels"][store_naming.ROLE_LABEL] == "fingerprint-key"
    check_fingerprint_key_secret(secret)
    path = tmp_path / "key"
    path.write_bytes(base64.b64decode(secret["data"]["key"]))
    loaded = FingerprintKey.from_file(path)
    assert loaded.key_id == FingerprintKey(bytes.fromhex(path.read_text())).key_id
    named = render_fingerprint_key_secret(
        store(fingerprintKey={"secretName": "my-fp"}), secrets.token_hex(32))
    assert named["metadata"]["name"] == "my-fp"


@pytest.mark.parametrize("data, problem", [
    ({}, "has no (base64) key 'key'"),
    ({"key": base64.b64encode(b"Zq9xKw").decode()}, "at least 32"),
    ({"key": base64.b64encode(b"ab" * 15).decode()}, "at least 32"),
])
def test_unusable_fingerprint_keys_are_refused_without_revealing_them(data, problem) -> None:
    secret = {"metadata": {"name": "fp"}, "data": data}
    with pytest.raises(StoreProblem) as caught:
        check_fingerprint_key_secret(secret)
    assert caught.value.reason == "FingerprintKeyInvalid"
    assert problem in caught.value.message and "Zq9xKw" not in caught.value.message


def test_the_store_serves_the_fingerprint_snapshot_from_its_key_secret() -> None:
    for body, secret_name in ((store(), "sup-fingerprint-key"),
                              (embedded(fingerprintKey={"secretName": "my-fp"}), "my-fp"),
                              (store(oneClick={"enabled": False}), "sup-fingerprint-key")):
        pod = _pod(body)
        server = pod["containers"][0]
        args = _parse(server["args"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
        directory, filename = str(args.fingerprint_key_file).rsplit("/", 1)
        secret = volumes[mounts[directory]["name"]]["secret"]
        assert secret["secretName"] == secret_name and secret["defaultMode"] == 0o440
        assert secret["items"] == [{"key": "key", "path": filename}]
        assert mounts[directory]["readOnly"] is True
        # The snapshot file (8.5 bytes per suppression) is on a volume of its own, not in
        # the 64 MiB /tmp nor on the embedded store's claim.
        fp_dir = str(args.fingerprint_dir)
        assert volumes[mounts[fp_dir]["name"]] == {"name": "fingerprints", "emptyDir": {}}
        assert not fp_dir.startswith(store_naming.DATA_MOUNT + "/")
        # The migration needs neither.
        assert all(m["mountPath"] not in (directory, fp_dir)
                   for m in pod["initContainers"][0]["volumeMounts"])
    # Editing the key rolls the store pods (restart: a new snapshot under the new key).
    before = render_store_deployment(store(), SETTINGS, VERSIONS)
    after = render_store_deployment(store(), SETTINGS, {**VERSIONS, "fingerprint-key": "104"})
    assert before["spec"]["template"] != after["spec"]["template"]


def _keyed_filter_pod(key: Any, **spec: Any) -> dict[str, Any]:
    policy = _policy(unsubscribeStoreRef={"name": "sup"}, **spec)
    dep = render_deployment(policy, "h1", SETTINGS, key=key)
    validate_k8s(dep)
    return dep["spec"]["template"]


def test_filter_pods_mount_the_stores_fingerprint_key() -> None:
    from mailwarden_operator.spampolicy import naming as policy_naming
    from mailwarden_operator.spampolicy.render.deployment import (
        SuppressionKey,
        render_canary_deployment,
        suppression_key_secret,
    )
    template = _keyed_filter_pod(SuppressionKey("sup-fingerprint-key", "7"))
    container = template["spec"]["containers"][0]
    args = _parse(container["args"])
    directory, filename = str(args.suppression_key_file).rsplit("/", 1)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
    # Not optional: the operator names it only once it exists and holds a usable key.
    assert volume["secret"] == {"secretName": "sup-fingerprint-key", "defaultMode": 0o440,
                                "items": [{"key": "key", "path": filename}]}
    assert mount["readOnly"] is True
    assert str(args.suppression_index_dir) == policy_naming.SUPPRESSION_INDEX_MOUNT
    assert template["metadata"]["annotations"][policy_naming.SUPPRESSION_KEY_ANNOTATION] == "7"
    # An edited key (new resourceVersion) rolls the pods; the canary mounts it too.
    assert _keyed_filter_pod(SuppressionKey("sup-fingerprint-key", "8")) != template
    canary = render_canary_deployment(
        _policy(unsubscribeStoreRef={"name": "sup"}), "h2", "h1", 1, SETTINGS,
        key=SuppressionKey("sup-fingerprint-key", "7"))
    assert "--suppression-key-file" in canary["spec"]["template"]["spec"]["containers"][0][
        "args"]
    # Without a key (the Secret is not there yet): each pod makes its own, as before.
    plain = _keyed_filter_pod(None)
    assert _parse(plain["spec"]["containers"][0]["args"]).suppression_key_file is None
    assert all("secret" not in v for v in plain["spec"]["volumes"])
    # Which Secret: the store's choice, or the default name while the store is absent (the
    # Secret outlives it, so a store coming and going does not roll the pods).
    policy = _policy(unsubscribeStoreRef={"name": "sup"})
    assert suppression_key_secret(policy, store()) == "sup-fingerprint-key"
    assert suppression_key_secret(policy, None) == "sup-fingerprint-key"
    assert suppression_key_secret(
        policy, store(fingerprintKey={"secretName": "my-fp"})) == "my-fp"
    assert suppression_key_secret(_policy(), store()) is None
