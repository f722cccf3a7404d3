"""The pure renderers: one test group per child kind, and every rendered object validated
against the Kubernetes OpenAPI schemas (strict) for 1.30 and the newest version."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from filter_server.policy.loader import load_policy_dir
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.spampolicy.policy import PolicyRejected, build_bundle
from mailwarden_operator.common.naming import MANAGED_BY
from mailwarden_operator.common.render import RenderSettings
from mailwarden_operator.spampolicy.render.configmap import render_configmap
from mailwarden_operator.spampolicy.render.deployment import render_deployment, server_args
from mailwarden_operator.spampolicy.render.hpa import render_hpa
from mailwarden_operator.spampolicy.render.pdb import render_pdb
from mailwarden_operator.spampolicy.render.servicemonitor import render_servicemonitor
from mailwarden_operator.spampolicy.render.services import render_headless_service, render_service
from mailwarden_operator.spampolicy.spec import with_defaults
from tests.operator.k8s_schemas import validate_k8s

REPO = Path(__file__).resolve().parents[3]
MODEL = {"binaryData": {"model.json.gz": base64.b64encode(b"\x1f\x8bmodel").decode()}}
SETTINGS = RenderSettings(default_image="registry.example/mailwarden:1.2.3")


def owner(**spec: Any) -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "spampolicy.yaml").read_text())
    body["metadata"] = {"name": "mail", "namespace": "team", "uid": "0f0e-uid",
                        "generation": 3}
    body["spec"].update(spec)
    body["spec"] = with_defaults(body["spec"])
    return body


def bundle_of(body: dict[str, Any]):
    return build_bundle(body["spec"]["policy"], lambda name: MODEL)


def all_children(body: dict[str, Any]) -> list[dict[str, Any]]:
    bundle = bundle_of(body)
    return [render_configmap(body, bundle), render_deployment(body, bundle.hash, SETTINGS),
            render_service(body), render_headless_service(body), render_hpa(body),
            render_pdb(body), render_servicemonitor(body)]


FULL = dict(
    image="registry.example/custom:2", replicas={"min": 3, "max": 30},
    autoscaling={"cpuUtilization": 60, "requestsPerSecond": {"averageValue": 500}},
    disruption={"maxUnavailable": "20%"}, rollout={"maxSurge": 2},
    resources={"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    server={"workers": 4, "drainSeconds": 20, "graceSeconds": 10, "preStopSeconds": 7,
            "maxMessageBytes": 10485760, "maxConnectionAgeMs": 300000,
            "maxConcurrentRpcs": 512, "logLevel": "warning"},
    tls={"secretName": "filter-tls", "requireClientCert": True},
    protocols=["grpc", "milter", "spamd", "rspamd"],
    monitoring={"interval": "15s", "labels": {"release": "prometheus"}},
    scheduling={"nodeSelector": {"pool": "mail"}, "priorityClassName": "critical",
                "tolerations": [{"key": "mail", "operator": "Exists",
                                 "effect": "NoSchedule"}]},
    imagePullSecrets=[{"name": "registry-creds"}], serviceAccountName="mail-puller")


@pytest.mark.parametrize("spec", [{}, FULL], ids=["defaults", "every-field"])
def test_every_rendered_object_is_valid_for_kubernetes(spec: dict[str, Any]) -> None:
    for obj in all_children(owner(**copy.deepcopy(spec))):
        validate_k8s(obj)
        assert obj["metadata"]["namespace"] == "team"
        ref = obj["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"],
                ref["blockOwnerDeletion"]) == ("SpamPolicy", "mail", "0f0e-uid", True, True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == MANAGED_BY


def test_pods_pull_with_the_given_secrets_as_the_given_account() -> None:
    """Issue 13 item 17 (private registries); absent unless set."""
    pod = render_deployment(owner(**copy.deepcopy(FULL)), "h", SETTINGS)["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert pod["serviceAccountName"] == pod["serviceAccount"] == "mail-puller"
    assert pod["automountServiceAccountToken"] is False
    plain = render_deployment(owner(), "h", SETTINGS)["spec"]["template"]["spec"]
    assert not {"imagePullSecrets", "serviceAccountName", "serviceAccount"} & set(plain)


def test_renderers_are_pure() -> None:
    body = owner(**copy.deepcopy(FULL))
    snapshot = copy.deepcopy(body)
    assert all_children(body) == all_children(body)
    assert body == snapshot


# -- ConfigMap ------------------------------------------------------------------------------

def test_configmap_is_immutable_named_by_hash_and_loads_with_the_same_hash(
        tmp_path: Path) -> None:
    body = owner()
    bundle = bundle_of(body)
    cm = render_configmap(body, bundle)
    assert cm["metadata"]["name"] == f"mail-policy-{bundle.hash}"
    assert cm["immutable"] is True
    assert cm["metadata"]["labels"][naming.HASH_LABEL] == bundle.hash
    # Lay it out as the kubelet would (..data symlink) and load it as the server does.
    data_dir = tmp_path / "..2026_01_01"
    data_dir.mkdir()
    for key, value in cm["data"].items():
        (data_dir / key).write_text(value)
    for key, value in cm["binaryData"].items():
        (data_dir / key).write_bytes(base64.b64decode(value))
    (tmp_path / "..data").symlink_to(data_dir.name)
    for key in [*cm["data"], *cm["binaryData"]]:
        (tmp_path / key).symlink_to(f"..data/{key}")
    loaded = load_policy_dir(tmp_path)
    assert loaded.hash == bundle.hash
    assert loaded.model_bytes == b"\x1f\x8bmodel"
    assert loaded.policy["model"]["file"] == "model.json.gz"


def test_a_policy_or_model_change_changes_the_hash_and_the_name() -> None:
    body = owner()
    first = bundle_of(body)
    changed = owner()
    # A valid change whatever the fitted thresholds are: tag moves below quarantine.
    thresholds = changed["spec"]["policy"]["thresholds"]
    thresholds["tag"] = round(thresholds["tag"] - 0.5, 2)
    assert bundle_of(changed).hash != first.hash
    other_model = build_bundle(body["spec"]["policy"],
                               lambda name: {"data": {"model.json.gz": "other"}})
    assert other_model.hash != first.hash
    # Serving fields are not policy content: same hash, same ConfigMap.
    assert bundle_of(owner(replicas={"min": 5, "max": 9})).hash == first.hash


def test_invalid_policies_and_missing_models_are_rejected_with_reasons() -> None:
    body = owner()
    body["spec"]["policy"]["rules"][0]["pattern"] = "(unclosed"
    with pytest.raises(PolicyRejected) as caught:
        bundle_of(body)
    assert caught.value.reason == "InvalidPolicy"
    assert "rules[0].pattern" in caught.value.summary()
    with pytest.raises(PolicyRejected) as caught:
        build_bundle(owner()["spec"]["policy"], lambda name: None)
    assert caught.value.reason == "ModelNotFound"
    with pytest.raises(PolicyRejected) as caught:
        build_bundle(owner()["spec"]["policy"], lambda name: {"data": {"other": "x"}})
    assert "has no key 'model.json.gz'" in caught.value.summary()
    bad_key = owner()
    bad_key["spec"]["policy"]["model"]["configMapRef"]["key"] = "dir/model"
    with pytest.raises(PolicyRejected) as caught:
        build_bundle(bad_key["spec"]["policy"], lambda name: {"data": {"dir/model": "x"}})
    assert "model.file" in caught.value.summary()


# -- Deployment -----------------------------------------------------------------------------

def test_deployment_rolls_out_per_hash_without_losing_capacity() -> None:
    body = owner()
    dep = render_deployment(body, "abc123", SETTINGS)
    spec = dep["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] == "25%"
    assert spec["template"]["metadata"]["annotations"][naming.HASH_ANNOTATION] == "abc123"
    assert spec["template"]["spec"]["volumes"][0]["configMap"]["name"] == "mail-policy-abc123"
    assert spec["replicas"] == 2
    other = render_deployment(body, "def456", SETTINGS)
    assert other["spec"]["template"] != spec["template"]
    assert other["spec"]["selector"] == spec["selector"]  # selectors are immutable


def test_deployment_probes_shutdown_and_spreading() -> None:
    dep = render_deployment(owner(**copy.deepcopy(FULL)), "abc123", SETTINGS)
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # FULL serves gRPC over TLS: the kubelet's plaintext gRPC probe checks the plaintext
    # health port instead (issue 13 item 3), which the server opens with --health-port.
    assert {"name": "health", "containerPort": naming.HEALTH_PORT, "protocol": "TCP"} in \
        container["ports"]
    args = container["args"]
    assert args[args.index("--health-port") + 1] == str(naming.HEALTH_PORT)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": naming.HEALTH_PORT}
    plain = render_deployment(owner(), "abc123", SETTINGS)["spec"]["template"]["spec"][
        "containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert plain[probe]["grpc"] == {"port": naming.GRPC_PORT}
    assert "--health-port" not in plain["args"]
    assert [p["name"] for p in plain["ports"]] == ["grpc", "metrics"]
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 7}}
    # The kubelet must not SIGKILL before preStop + drain + grace are over.
    assert pod["terminationGracePeriodSeconds"] > 7 + 20 + 10
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in pod["topologySpreadConstraints"]:
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]
        assert constraint["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert pod["nodeSelector"] == {"pool": "mail"}
    assert pod["priorityClassName"] == "critical"
    assert container["image"] == "registry.example/custom:2"
    assert container["resources"]["limits"] == {"memory": "2Gi"}
    # The server sizes its memory budget from the limit the kubelet hands it.
    from testkit.kubelet import container_env
    env = container_env(container, {"metadata.name": "p", "metadata.namespace": "n"})
    assert env["MAILWARDEN_MEMORY_LIMIT_BYTES"] == str(2 * 2**30)


def test_deployment_meets_the_restricted_pod_security_standard() -> None:
    pod = render_deployment(owner(), "abc123", SETTINGS)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert container["image"] == SETTINGS.default_image
    assert container["resources"]["requests"] == {"cpu": "250m", "memory": "256Mi"}
    assert "hostNetwork" not in pod and "hostPID" not in pod


def test_server_args_follow_the_serve_command_line() -> None:
    args = server_args(owner(**copy.deepcopy(FULL))["spec"])
    assert args[0] == "serve"
    pairs = dict(zip(args[1::2], args[2::2]))
    assert pairs["--policy-dir"] == naming.POLICY_MOUNT
    assert pairs["--grpc-port"] == str(naming.GRPC_PORT)
    assert pairs["--metrics-port"] == str(naming.METRICS_PORT)
    assert pairs["--workers"] == "4" and pairs["--drain-seconds"] == "20"
    assert pairs["--grace-seconds"] == "10" and pairs["--max-message-bytes"] == "10485760"
    assert pairs["--max-connection-age-ms"] == "300000"
    assert pairs["--max-concurrent-rpcs"] == "512" and pairs["--log-level"] == "warning"
    assert pairs["--tls-dir"] == naming.TLS_MOUNT and args[-1] == "--require-client-cert"
    assert pairs["--milter-port"] == "11332" and pairs["--spamd-port"] == "7830"
    assert pairs["--rspamd-port"] == "11333"
    assert pairs["--health-port"] == str(naming.HEALTH_PORT)
    defaults = server_args(owner()["spec"])
    assert "--workers" not in defaults and "--tls-dir" not in defaults
    assert not {"--milter-port", "--spamd-port", "--rspamd-port"} & set(defaults)


# -- Services, HPA, PDB, ServiceMonitor -------------------------------------------------------

def test_services() -> None:
    body = owner()
    main, headless = render_service(body), render_headless_service(body)
    assert main["spec"]["type"] == "ClusterIP" and "clusterIP" not in main["spec"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    for svc in (main, headless):
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
            "grpc": naming.GRPC_PORT, "metrics": naming.METRICS_PORT}
        assert svc["spec"]["selector"] == naming.selector_labels("mail")
    assert headless["metadata"]["name"] == "mail-filter-headless"


def test_spec_protocols_render_container_and_service_ports() -> None:
    body = owner(protocols=["grpc", "spamd", "milter"])  # no rspamd
    container = render_deployment(body, bundle_of(body).hash, SETTINGS)[
        "spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "grpc": naming.GRPC_PORT, "metrics": naming.METRICS_PORT, "milter": 11332,
        "spamd": 7830}
    pairs = dict(zip(container["args"][1::2], container["args"][2::2]))
    assert pairs["--milter-port"] == "11332" and pairs["--spamd-port"] == "7830"
    assert "--rspamd-port" not in container["args"]
    for svc in (render_service(body), render_headless_service(body)):
        ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
        # spamd keeps its registered port 783 on the Service; the pod listens unprivileged
        assert ports == {"grpc": (naming.GRPC_PORT, "grpc"),
                         "metrics": (naming.METRICS_PORT, "metrics"),
                         "milter": (11332, "milter"), "spamd": (783, "spamd")}


def test_hpa_scales_up_fast_and_down_slowly() -> None:
    hpa = render_hpa(owner())["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    assert hpa["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    up, down = hpa["behavior"]["scaleUp"], hpa["behavior"]["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 0
    assert {"type": "Percent", "value": 100, "periodSeconds": 15} in up["policies"]
    assert down["stabilizationWindowSeconds"] == 300
    assert down["policies"] == [{"type": "Percent", "value": 10, "periodSeconds": 60}]
    with_rps = render_hpa(owner(**copy.deepcopy(FULL)))["spec"]
    assert with_rps["metrics"][1] == {"type": "Pods", "pods": {
        "metric": {"name": "mailwarden_classify_requests_per_second"},
        "target": {"type": "AverageValue", "averageValue": "500"}}}
    assert with_rps["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                          "name": "mail-filter"}


def test_pdb() -> None:
    pdb = render_pdb(owner())["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert render_pdb(owner(disruption={"maxUnavailable": "20%"}))["spec"]["maxUnavailable"] \
        == "20%"


def test_servicemonitor_scrapes_the_clusterip_service_only() -> None:
    sm = render_servicemonitor(owner(**copy.deepcopy(FULL)))
    assert sm["spec"]["selector"]["matchLabels"][naming.SERVICE_ROLE_LABEL] == "main"
    assert render_service(owner())["metadata"]["labels"][naming.SERVICE_ROLE_LABEL] == "main"
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "interval": "15s",
                                        "path": "/metrics"}]
    assert sm["metadata"]["labels"]["release"] == "prometheus"


def test_bulk_gate_gets_the_store_signing_keys_and_nothing_else_does() -> None:
    """Filter pods see the store's signing keys only when the policy's bulk gate needs
    them to verify one-click tokens; the policy (and its resolver settings) reaches the
    pods in the ConfigMap as every other policy field does."""
    gate = owner(unsubscribeStoreRef={"name": "news"})
    gate["spec"]["policy"]["authentication"]["bulkGate"] = {"enabled": True}
    gate["spec"]["policy"]["authentication"]["dns"] = {"servers": ["10.96.0.10"],
                                                       "timeoutSeconds": 0.5}
    deployment = render_deployment(gate, bundle_of(gate).hash, SETTINGS)
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--signing-key-dir") + 1] == naming.SIGNING_KEYS_MOUNT
    volume = next(v for v in pod["volumes"] if v["name"] == "signing-keys")
    assert volume["secret"] == {"secretName": "news-signing-key", "defaultMode": 0o440,
                                "optional": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"]
                 if m["name"] == "signing-keys")
    assert mount == {"name": "signing-keys", "mountPath": naming.SIGNING_KEYS_MOUNT,
                     "readOnly": True}
    validate_k8s(deployment)
    policy = yaml.safe_load(render_configmap(gate, bundle_of(gate))["data"]["policy.yaml"])
    assert policy["authentication"]["dns"]["servers"] == ["10.96.0.10"]
    for without in (owner(unsubscribeStoreRef={"name": "news"}), owner()):
        rendered = render_deployment(without, bundle_of(without).hash, SETTINGS)
        assert "--signing-key-dir" not in rendered["spec"]["template"]["spec"][
            "containers"][0]["args"]
        assert all(v["name"] != "signing-keys"
                   for v in rendered["spec"]["template"]["spec"]["volumes"])


def test_a_pod_following_a_store_keeps_its_suppression_index_outside_tmp() -> None:
    """The index (8.5 bytes per suppression) outgrew the 64 MiB /tmp at ~7.5 M: the
    kubelet evicts a pod over an emptyDir's limit. It gets a volume of its own."""
    following = owner(unsubscribeStoreRef={"name": "news"})
    deployment = render_deployment(following, bundle_of(following).hash, SETTINGS)
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--suppression-index-dir") + 1] == naming.SUPPRESSION_INDEX_MOUNT
    assert {"name": "suppression-index", "emptyDir": {}} in pod["volumes"]
    assert {"name": "suppression-index", "mountPath": naming.SUPPRESSION_INDEX_MOUNT} in \
        pod["containers"][0]["volumeMounts"]
    validate_k8s(deployment)
    alone = render_deployment(owner(), bundle_of(owner()).hash, SETTINGS)
    assert "--suppression-index-dir" not in alone["spec"]["template"]["spec"]["containers"][
        0]["args"]
    assert all(v["name"] != "suppression-index"
               for v in alone["spec"]["template"]["spec"]["volumes"])
