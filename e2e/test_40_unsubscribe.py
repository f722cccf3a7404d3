"""An RFC 8058 one-click unsubscribe reaches Classify on every filter pod, with either store
backend: the embedded one of examples/unsubscribestore-dev.yaml, and PostgreSQL -- the store
of examples/unsubscribestore.yaml on a real PostgreSQL (primary and synchronous standby,
started by the suite on an address the pods reach).

The SpamPolicy is pointed at the store; a link is minted on the host with `mailwarden token
mint` and the signing key the operator generated into the store's Secret; a client Job then
does what a mailbox provider and a sender do: GET the link (a prefetching scanner: nothing
may change), POST a tampered link (nothing may change, same answer as a valid one), POST the
real one through the store's Service, and Classify on every filter pod (addressed one by
one) until the address is reported suppressed."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from e2e import oneclick
from e2e.conftest import E2E
from e2e.jobs import run_job, summaries
from e2e.kube import is_true, observed, wait_for

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
