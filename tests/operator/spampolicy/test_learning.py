"""spec.learning on the KMock emulator, reconciler in-process: the filter pods get the
shared learning folder and the admin token (generated once into an owned Secret, or the
user's own), a missing claim or token is reported instead of rolling out pods that could not
start, and a new token rolls the pods. The rendered Deployment is validated against the
Kubernetes OpenAPI schemas and the CRD's CEL rules are checked on the real API server in
tests/operator_cluster (test_crds, test_examples_ready)."""

from __future__ import annotations

import base64
import itertools
import logging
from typing import Any

import pytest

from mailwarden_operator.common.kube import DEPLOYMENTS, PVCS, SECRETS, SPAMPOLICIES
from mailwarden_operator.spampolicy import learning, naming
from mailwarden_operator.spampolicy.reconcile import Reconciler
from mailwarden_operator.spampolicy.spec import serving_errors, with_defaults
from tests.operator.conftest import Cluster
from tests.operator.k8s_schemas import validate_k8s

NAME = "mail"
_NAMESPACES = itertools.count()


@pytest.fixture
def ns() -> str:
    """A namespace per test (the emulated cluster is shared by the module)."""
    return f"learn-{next(_NAMESPACES)}"


POLICY = {"rules": [{"name": "VIAGRA", "target": "body", "pattern": "viagra", "score": 6}]}


def create(kube: Any, ns: str, **learning_spec: Any) -> None:
    kube.create(SPAMPOLICIES, ns, {
        "apiVersion": "mailwarden.dev/v1alpha1", "kind": "SpamPolicy",
        "metadata": {"name": NAME, "namespace": ns},
        "spec": {"policy": POLICY, "learning": learning_spec}})


def claim(kube: Any, ns: str, name: str = "learned") -> None:
    kube.create(PVCS, ns, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                           "metadata": {"name": name, "namespace": ns},
                           "spec": {"accessModes": ["ReadWriteMany"],
                                    "resources": {"requests": {"storage": "1Gi"}}}})


def pod_template(kube: Any, ns: str) -> dict[str, Any]:
    return kube.get(DEPLOYMENTS, ns, naming.workload_name(NAME))["spec"]["template"]


def condition(kube: Any, ns: str, kind: str) -> dict[str, Any]:
    status = kube.get(SPAMPOLICIES, ns, NAME).get("status") or {}
    return next(c for c in status["conditions"] if c["type"] == kind)


def token_of(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"][learning.TOKEN_KEY]).decode()


def test_learning_mounts_the_folder_and_a_generated_token_kept_across_reconciles(
        cluster: Cluster, ns: str, caplog: pytest.LogCaptureFixture) -> None:
    kube = cluster.kube
    claim(kube, ns)
    create(kube, ns, enabled=True, claimName="learned", subPath="team-a", maxPerHour=50)
    reconciler = Reconciler(kube)
    with caplog.at_level(logging.DEBUG):
        reconciler.reconcile(ns, NAME)
    secret = kube.get(SECRETS, ns, f"{NAME}-learn-token")
    token = token_of(secret)
    assert len(token) >= 43  # 32 random bytes, base64url
    assert token not in caplog.text
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "SpamPolicy"

    template = pod_template(kube, ns)
    pod, container = template["spec"], template["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--learn-dir") + 1] == learning.LEARN_MOUNT
    assert args[args.index("--admin-token-file") + 1] == f"{learning.TOKEN_MOUNT}/token"
    assert args[args.index("--learn-max-per-hour") + 1] == "50"
    assert "--learn-max-messages" not in args  # the server's default
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["learn"] == {"name": "learn", "mountPath": learning.LEARN_MOUNT,
                               "subPath": "team-a"}
    assert mounts["learn-token"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["learn"]["persistentVolumeClaim"] == {"claimName": "learned"}
    assert volumes["learn-token"]["secret"]["secretName"] == f"{NAME}-learn-token"
    # Still non-root with a read-only root: the folder is a volume, not the image.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert token not in str(kube.get(DEPLOYMENTS, ns, naming.workload_name(NAME)))
    assert template["metadata"]["annotations"][learning.TOKEN_VERSION_ANNOTATION] == \
        secret["metadata"]["resourceVersion"]
    validate_k8s(kube.get(DEPLOYMENTS, ns, naming.workload_name(NAME)))

    # Another reconcile, and another operator replica, keep the same token.
    reconciler.reconcile(ns, NAME)
    Reconciler(kube).reconcile(ns, NAME, trigger="resync")
    assert token_of(kube.get(SECRETS, ns, f"{NAME}-learn-token")) == token
    assert condition(kube, ns, "PolicyValid")["status"] == "True"


def test_a_new_token_rolls_the_pods(cluster: Cluster, ns: str) -> None:
    kube = cluster.kube
    claim(kube, ns)
    create(kube, ns, enabled=True, claimName="learned")
    reconciler = Reconciler(kube)
    reconciler.reconcile(ns, NAME)
    before = pod_template(kube, ns)["metadata"]["annotations"][learning.TOKEN_VERSION_ANNOTATION]
    name = f"{NAME}-learn-token"
    kube.merge_patch(SECRETS, ns, name, {"data": {"token": base64.b64encode(
        b"rotated-by-hand").decode()}})
    reconciler.reconcile(ns, NAME)
    after = pod_template(kube, ns)["metadata"]["annotations"][learning.TOKEN_VERSION_ANNOTATION]
    assert after != before
    assert token_of(kube.get(SECRETS, ns, name)) == "rotated-by-hand"  # never overwritten


def test_the_users_own_token_secret_is_used_and_never_created(cluster: Cluster, ns: str) -> None:
    kube = cluster.kube
    claim(kube, ns)
    create(kube, ns, enabled=True, claimName="learned", adminTokenSecretName="ops-token")
    reconciler = Reconciler(kube)
    reconciler.reconcile(ns, NAME)
    assert kube.get(SECRETS, ns, "ops-token") is None
    assert kube.get(SECRETS, ns, f"{NAME}-learn-token") is None
    valid = condition(kube, ns, "PolicyValid")
    assert (valid["status"], valid["reason"]) == ("False", "LearningTokenNotFound")
    assert "ops-token" in valid["message"]
    assert kube.get(DEPLOYMENTS, ns, naming.workload_name(NAME)) is None

    kube.create(SECRETS, ns, {"apiVersion": "v1", "kind": "Secret",
                              "metadata": {"name": "ops-token", "namespace": ns},
                              "data": {"other": base64.b64encode(b"x").decode()}})
    reconciler.reconcile(ns, NAME)
    assert condition(kube, ns, "PolicyValid")["reason"] == "LearningTokenInvalid"

    kube.merge_patch(SECRETS, ns, "ops-token", {"data": {
        "token": base64.b64encode(b"s3cret-of-ops").decode()}})
    reconciler.reconcile(ns, NAME)
    assert condition(kube, ns, "PolicyValid")["status"] == "True"
    volumes = {v["name"]: v for v in pod_template(kube, ns)["spec"]["volumes"]}
    assert volumes["learn-token"]["secret"]["secretName"] == "ops-token"
    assert kube.get(SECRETS, ns, f"{NAME}-learn-token") is None


def test_a_missing_claim_is_reported_and_nothing_rolls_out(cluster: Cluster, ns: str) -> None:
    kube = cluster.kube
    create(kube, ns, enabled=True, claimName="learned")
    reconciler = Reconciler(kube)
    reconciler.reconcile(ns, NAME)
    valid = condition(kube, ns, "PolicyValid")
    assert (valid["status"], valid["reason"]) == ("False", "LearningClaimNotFound")
    assert "learned" in valid["message"]
    assert kube.get(DEPLOYMENTS, ns, naming.workload_name(NAME)) is None
    claim(kube, ns)
    reconciler.reconcile(ns, NAME, trigger="resync")
    assert condition(kube, ns, "PolicyValid")["status"] == "True"
    assert "--learn-dir" in pod_template(kube, ns)["spec"]["containers"][0]["args"]


def test_learning_off_renders_nothing_and_creates_no_secret(cluster: Cluster, ns: str) -> None:
    kube = cluster.kube
    create(kube, ns, enabled=False, claimName="learned")
    Reconciler(kube).reconcile(ns, NAME)
    template = pod_template(kube, ns)
    assert "--learn-dir" not in template["spec"]["containers"][0]["args"]
    assert "--admin-token-file" not in template["spec"]["containers"][0]["args"]
    assert learning.TOKEN_VERSION_ANNOTATION not in template["metadata"]["annotations"]
    assert kube.get(SECRETS, ns, f"{NAME}-learn-token") is None


@pytest.mark.parametrize(("learning_spec", "error"), [
    ({"enabled": True}, "learning.enabled needs learning.claimName"),
    ({"enabled": True, "claimName": "c", "subPath": "/abs"}, "no leading / and no .."),
    ({"enabled": True, "claimName": "c", "subPath": "a/../b"}, "no leading / and no .."),
])
def test_the_cel_rules_are_repeated_by_the_operator(learning_spec: dict[str, Any],
                                                    error: str) -> None:
    spec = with_defaults({"policy": POLICY, "learning": learning_spec})
    assert any(error in e for e in serving_errors(spec, NAME))


def test_defaults() -> None:
    spec = with_defaults({"policy": POLICY, "learning": {"claimName": "c"}})
    assert spec["learning"] == {"enabled": False, "claimName": "c"}
    assert "learning" not in with_defaults({"policy": POLICY})
    assert serving_errors(with_defaults({"policy": POLICY, "learning": {
        "enabled": True, "claimName": "c", "subPath": "team/a"}}), NAME) == []
