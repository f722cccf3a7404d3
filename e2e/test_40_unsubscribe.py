"""An RFC 8058 one-click unsubscribe reaches Classify on every filter pod, with either store
backend: the embedded one of examples/unsubscribestore-dev.yaml, and PostgreSQL -- the store
of examples/unsubscribestore.yaml on a real PostgreSQL (primary and synchronous standby,
started by the suite on an address the pods reach).

The SpamPolicy is pointed at the store; a link is minted on the host with `mailwarden token
mint` and the signing key the operator generated into the store's Secret; a client Job then
does what a mailbox provider and a sender do: GET the link (a prefetching scanner: nothing
may change), POST a tampered link (nothing may change, same answer as a valid one), POST the
real one through the store's Service, and Classify on every filter pod (addressed one by
one) until the address is reported suppressed.

On the way it checks the suppression fingerprint key the operator manages (issue 15): the
store's `<store>-fingerprint-key` Secret exists, every filter pod mounts it and started from
the store's fingerprint snapshot (its log says so, and the store counted one snapshot sent
per filter pod), and a reconcile of the store (a spec change to its one-click Service's
annotations) leaves the Secret exactly as it was."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from e2e import oneclick
from e2e.conftest import E2E
from e2e.jobs import run_job, summaries
from e2e.kube import is_true, metric, observed, wait_for
from mailwarden import wire
from mailwarden_operator.spampolicy import naming as policy_naming
from mailwarden_operator.unsubscribestore import naming as store_naming

pytestmark = pytest.mark.timeout(900)


@pytest.mark.parametrize("backend", ["embedded", "postgres"])
def test_one_click_unsubscribe_reaches_classify_on_every_filter_pod(
        e2e: E2E, backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    store_name = request.getfixturevalue("store_name" if backend == "embedded"
                                         else "postgres_store")
    sp = e2e.spampolicy()
    if (sp["spec"].get("unsubscribeStoreRef") or {}).get("name") != store_name:
        e2e.kube.merge_patch("spampolicy", e2e.policy,
                             {"spec": {"unsubscribeStoreRef": {"name": store_name}}})
    e2e.wait_policy_settled()
    wait_for(lambda: is_true(e2e.spampolicy(), "SuppressionReady"), 300,
             "SpamPolicy SuppressionReady=True", interval=2)

    store = wait_for(lambda: (lambda s: s if observed(s) and is_true(s, "Ready") else None)(
        e2e.kube.get("unsubscribestore", store_name)), 300, "the store to be Ready")
    key_name = store["status"]["fingerprintKeySecret"]
    assert key_name == store_naming.default_fingerprint_key_secret(store_name)
    # The filter pods roll onto the store's key once the operator has made it.
    wait_for(lambda: _mounted_key(e2e.kube.get("deployment", e2e.workload)["spec"]
                                  ["template"]) == key_name, 300,
             "the filter Deployment to mount the store's fingerprint key", interval=2)
    e2e.wait_policy_settled()
    secret = e2e.kube.json("get", "secret", store["status"]["signingKeySecret"])
    key_file = tmp_path / "current"
    key_file.write_bytes(base64.b64decode(secret["data"]["current"]))
    key_file.chmod(0o600)

    base = store["status"]["endpoints"]["http"].rstrip("/")
    url = f"{base}/u/{oneclick.mint(key_file, oneclick.ADDRESS)}"
    tampered = f"{base}/u/{oneclick.tamper(oneclick.mint(key_file, oneclick.OTHER))}"
    output = run_job(e2e.kube, e2e.image, "oneclick",
                     ["python", "/e2e/bin/mwclient.py", "oneclick", "--url", url,
                      "--tampered-url", tampered, "--address", oneclick.ADDRESS,
                      "--other", oneclick.OTHER, "--scope", oneclick.SCOPE,
                      "--filter-host", e2e.headless_host], timeout=300)
    result = summaries(output)[0]
    print(f"one-click in the cluster ({backend} store {store_name}):", oneclick.check(result))
    assert len(result["pods"]) == len(e2e.filter_pods())

    _check_shared_fingerprint_index(e2e, store_name, key_name, backend)


def _mounted_key(pod_template: dict[str, Any]) -> str | None:
    """The Secret a filter pod's `--suppression-key-file` comes from (None: no key file)."""
    pod = pod_template["spec"]
    container = next(c for c in pod["containers"] if c["name"] == policy_naming.CONTAINER_NAME)
    if "--suppression-key-file" not in container["args"]:
        return None
    path = container["args"][container["args"].index("--suppression-key-file") + 1]
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    return next(v for v in pod["volumes"] if v["name"] == mount["name"])["secret"]["secretName"]


def _snapshots_sent(e2e: E2E, store_name: str) -> dict[str, float]:
    """mailwarden_unsubscribe_fingerprint_snapshots_total by outcome, summed over the
    store's pods (their /metrics, through the API server's pod proxy)."""
    selector = ",".join(f"{k}={v}" for k, v in store_naming.selector_labels(store_name).items())
    texts = [e2e.kube.raw(f"/api/v1/namespaces/{e2e.namespace}/pods/{p['metadata']['name']}:"
                          f"{wire.STORE_METRICS_PORT}/proxy/metrics")
             for p in e2e.kube.items("pods", "-l", selector)
             if not p["metadata"].get("deletionTimestamp")]
    return {outcome: sum(metric(t, "mailwarden_unsubscribe_fingerprint_snapshots_total",
                                outcome=outcome) for t in texts)
            for outcome in ("sent", "other_key", "no_key")}


def _check_shared_fingerprint_index(e2e: E2E, store_name: str, key_name: str,
                                    backend: str) -> None:
    """Every filter pod holds the store's fingerprint key and built its shared index from
    the store's fingerprint snapshot; the key's Secret survives a reconcile unchanged."""
    pods = e2e.filter_pods()
    for pod in pods:
        assert _mounted_key(pod) == key_name, pod["metadata"]["name"]
        log = e2e.kube.run("logs", pod["metadata"]["name"], "-c",
                           policy_naming.CONTAINER_NAME).stdout
        assert "downloaded the store's fingerprint snapshot" in log, \
            f"{pod['metadata']['name']} did not start from the store's snapshot:\n{log[-3000:]}"
    sent = _snapshots_sent(e2e, store_name)
    assert sent["sent"] >= len(pods) and sent["no_key"] == 0, sent

    secret = e2e.kube.json("get", "secret", key_name)
    assert "ownerReferences" not in secret["metadata"]  # kept when the store is deleted
    store_template = e2e.kube.get("deployment", store_naming.workload_name(store_name))[
        "spec"]["template"]
    # A spec change that touches only the one-click Service (its annotations): a full
    # reconcile of the store, seen done when the Service carries the annotation.
    poke = f"{backend}-{secret['metadata']['resourceVersion']}"
    e2e.kube.merge_patch("unsubscribestore", store_name, {"spec": {"http": {"service": {
        "annotations": {"e2e.mailwarden.dev/poke": poke}}}}})
    http_service = store_naming.http_service_name(store_name)
    wait_for(lambda: ((e2e.kube.get("service", http_service) or {}).get("metadata", {})
                      .get("annotations") or {}).get("e2e.mailwarden.dev/poke") == poke,
             120, "the operator to reconcile the store", interval=2)
    after = e2e.kube.json("get", "secret", key_name)
    assert after["data"] == secret["data"]
    assert after["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"]
    assert e2e.kube.get("deployment", store_naming.workload_name(store_name))["spec"][
        "template"] == store_template, "a reconcile rolled the store pods"
    print(f"fingerprint key ({backend} store {store_name}): Secret {key_name} mounted by "
          f"{len(pods)} filter pods, each started from the store's snapshot "
          f"(store counted {sent}); unchanged across a reconcile "
          f"(resourceVersion {after['metadata']['resourceVersion']})")
