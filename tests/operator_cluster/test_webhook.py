"""The admission webhook on a real API server (issue 13 items 10, 14): called over TLS with
the chart's certificate through the webhook Service; refuses an invalid SpamPolicy at
`kubectl apply`; not called for metadata-only edits and writes to objects being deleted
(the chart's matchConditions), so labelling and a foreground delete work while no operator
replica answers; answers a repeated content from its verdict cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.cluster import ControlPlane
from testkit.processes import free_port
from tests.operator_cluster.kubeapi import kubectl, wait_for
from tests.operator_cluster.operator_proc import (
    OperatorOnCluster,
    install_webhook,
    uninstall_webhook,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def webhook(control_plane: ControlPlane, crds_installed: list[str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    workdir = tmp_path_factory.mktemp("webhook")
    port = free_port(control_plane.host_ip)
    created = install_webhook(control_plane, workdir / "tls", port)
    try:
        yield workdir, port
    finally:
        uninstall_webhook(control_plane, created)


def start_operator(cp: ControlPlane, workdir: Path, port: int,
                   name: str = "operator") -> OperatorOnCluster:
    return OperatorOnCluster(cp, workdir, "--webhook-port", str(port), "--webhook-cert-dir",
                             str(workdir / "tls"), listen=cp.host_ip, name=name).start()


def apply(cp: ControlPlane, body: dict[str, Any]) -> tuple[int, str]:
    done = kubectl(cp, "apply", "--server-side", "--field-manager", "tests", "-f", "-",
                   stdin=yaml.safe_dump(body))
    return done.returncode, done.stdout + done.stderr


def policy(namespace: str, name: str = "mail", pattern: str = "viagra") -> dict[str, Any]:
    return {"apiVersion": "mailwarden.dev/v1alpha1", "kind": "SpamPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"policy": {"rules": [{"name": "R1", "target": "body",
                                           "pattern": pattern, "score": 5}]}}}


def reviews(operator: OperatorOnCluster) -> float:
    return operator.metric("mailwarden_operator_webhook_reviews_total")


def test_the_webhook_judges_specs_only_and_never_blocks_metadata_or_deletion(
        control_plane: ControlPlane, webhook: tuple[Path, int], namespace: str) -> None:
    workdir, port = webhook
    operator = start_operator(control_plane, workdir, port)
    try:
        def ready() -> bool:
            import urllib.request
            url = f"http://{control_plane.host_ip}:{operator.liveness_port}/readyz"
            try:
                with urllib.request.urlopen(url, timeout=2) as rsp:
                    return rsp.status == 200
            except OSError:
                return False
        wait_for("the operator's /readyz (webhook listening)", ready, timeout=60)
        # An invalid policy is refused at apply with the validator's message...
        code, output = apply(control_plane, policy(namespace, "bad", pattern="(unclosed"))
        assert code != 0 and "invalid SpamPolicy" in output and "spec.policy.rules" in output, \
            output
        # ...a valid one admitted, and reconciled into its children.
        code, output = apply(control_plane, policy(namespace))
        assert code == 0, output
        wait_for("the filter Deployment", lambda: client.AppsV1Api(
            control_plane.api_client()).list_namespaced_deployment(namespace).items)
        judged = reviews(operator)
        assert judged >= 2
        # Labels, annotations and kopf's own bookkeeping patches: the API server does not
        # even call the webhook (matchConditions).
        done = kubectl(control_plane, "label", "-n", namespace, "spampolicy/mail", "team=a")
        assert done.returncode == 0, done.stderr
        done = kubectl(control_plane, "annotate", "-n", namespace, "spampolicy/mail",
                       "note=x")
        assert done.returncode == 0, done.stderr
        assert reviews(operator) == judged
        # The same content again (re-apply of an unchanged spec is no UPDATE of the spec;
        # a new object with the same spec is): answered from the verdict cache.
        code, output = apply(control_plane, policy(namespace, "mail2"))
        assert code == 0, output
    finally:
        operator.stop()

    # No replica answers now (failurePolicy Fail): a new spec is refused...
    code, output = apply(control_plane, policy(namespace, "late"))
    assert code != 0 and "failed calling webhook" in output, output
    # ...but labelling still works, and so does a foreground delete (the garbage collector
    # removes its finalizer from an object being deleted).
    done = kubectl(control_plane, "label", "-n", namespace, "spampolicy/mail", "team=b",
                   "--overwrite")
    assert done.returncode == 0, done.stderr
    done = kubectl(control_plane, "delete", "-n", namespace, "spampolicy/mail",
                   "--cascade=foreground", "--timeout=90s", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    gone = kubectl(control_plane, "get", "-n", namespace, "spampolicy/mail")
    assert gone.returncode != 0 and "NotFound" in gone.stderr
