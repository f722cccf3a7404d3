"""The admission webhook on a real API server (issue 13 items 10, 14): called over TLS with
the chart's certificate through the webhook Service; refuses an invalid SpamPolicy at
`kubectl apply`; not called for metadata-only edits and writes to objects being deleted
(the chart's matchConditions), so labelling and a foreground delete work while no operator
replica answers; answers a repeated content from its verdict cache."""

from __future__ import annotations

import time
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
                   name: str = "operator", *extra: str) -> OperatorOnCluster:
    return OperatorOnCluster(cp, workdir, "--webhook-port", str(port), "--webhook-cert-dir",
                             str(workdir / "tls"), *extra, listen=cp.host_ip,
                             name=name).start()


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


GOLDEN_HAM = "From: alice@example.org\r\nSubject: minutes\r\n\r\nThe meeting minutes.\r\n"
GOLDEN_SPAM = "From: x@spam.test\r\nSubject: offer\r\n\r\nCheap viagra, buy now!\r\n"


def test_a_change_that_quarantines_golden_ham_is_refused_at_apply(
        control_plane: ControlPlane, webhook: tuple[Path, int], namespace: str) -> None:
    """Issue 18: the golden corpus guards every change at `kubectl apply`."""
    workdir, port = webhook
    for name, label, raw in (("golden-ham", "ham", GOLDEN_HAM),
                             ("golden-spam", "spam", GOLDEN_SPAM)):
        code, output = apply(control_plane, {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {f"{label}1.eml": raw}})
        assert code == 0, output
    guarded = policy(namespace, "guarded", pattern="viagra")
    guarded["spec"]["policy"]["rules"][0]["score"] = 12
    guarded["spec"]["goldenCorpus"] = {"configMaps": [
        {"name": "golden-ham", "label": "ham"}, {"name": "golden-spam", "label": "spam"}]}
    # The golden-corpus volume (chart value operator.goldenCorpusVolume): a folder per
    # namespace, here with the same ham as a directory.
    volume = workdir / "golden-volume"
    (volume / namespace / "team" / "ham").mkdir(parents=True)
    (volume / namespace / "team" / "ham" / "minutes.eml").write_text(GOLDEN_HAM)
    operator = start_operator(control_plane, workdir, port, "golden-operator",
                              "--golden-corpus-dir", str(volume))
    try:
        wait_for("the webhook to answer", lambda: apply(control_plane, guarded)[0] == 0,
                 timeout=60)
        bad = yaml.safe_load(yaml.safe_dump(guarded))
        bad["spec"]["policy"]["rules"].append(
            {"name": "MEETING_BLAST", "target": "body", "pattern": "meeting", "score": 11})
        started = time.perf_counter()
        code, output = apply(control_plane, bad)
        print(f"golden corpus: refused kubectl apply answered in "
              f"{time.perf_counter() - started:.2f} s")
        assert code != 0, output
        assert "refused by its golden corpus" in output, output
        assert "golden-ham/ham1.eml would be QUARANTINE" in output, output
        assert "MEETING_BLAST +11" in output, output
        # The stored object is still the good one.
        stored = client.CustomObjectsApi(control_plane.api_client()).get_namespaced_custom_object(
            "mailwarden.dev", "v1alpha1", namespace, "spampolicies", "guarded")
        assert [r["name"] for r in stored["spec"]["policy"]["rules"]] == ["R1"]
        # The CRD's CEL rule refuses a bound that does not fit the label (no webhook needed).
        mislabelled = yaml.safe_load(yaml.safe_dump(guarded))
        mislabelled["spec"]["goldenCorpus"]["configMaps"][1]["atMost"] = "TAG"
        code, output = apply(control_plane, mislabelled)
        assert code != 0 and "atMost is for ham" in output, output
        # The same from a directory of the volume; a path out of the namespace's folder is
        # refused by the CRD's rule.
        from_volume = yaml.safe_load(yaml.safe_dump(bad))
        from_volume["spec"]["goldenCorpus"] = {"directories": [
            {"path": "team/ham", "label": "ham"}]}
        code, output = apply(control_plane, from_volume)
        assert code != 0, output
        assert "golden ham directory team/ham/minutes.eml would be QUARANTINE" in output, \
            output
        escaping = yaml.safe_load(yaml.safe_dump(from_volume))
        escaping["spec"]["goldenCorpus"]["directories"][0]["path"] = "../other/ham"
        code, output = apply(control_plane, escaping)
        assert code != 0 and "no leading / and no .." in output, output
    finally:
        operator.stop()
