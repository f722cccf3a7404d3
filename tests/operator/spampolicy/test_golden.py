"""The golden corpus on a cluster (issue 18), below the real control plane: ConfigMaps read
as golden sets, the webhook's verdict and message, and the operator refusing to roll out a
change that breaks the corpus when no webhook stopped it (KMock, the reconciler in-process).
The refusal at `kubectl apply` is proven on the real API server in
tests/operator_cluster/test_webhook.py."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from mailwarden_operator.common.kube import CONFIGMAPS, DEPLOYMENTS, SPAMPOLICIES
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.spampolicy.golden import golden_sets
from mailwarden_operator.spampolicy.policy import PolicyRejected
from mailwarden_operator.spampolicy.reconcile import Reconciler
from mailwarden_operator.spampolicy.spec import serving_errors, with_defaults
from mailwarden_operator.spampolicy.webhook import golden_errors, golden_message
from tests.operator.conftest import Cluster, condition

HAM = "From: alice@example.org\r\nSubject: minutes\r\n\r\nThe meeting minutes are attached.\r\n"
SPAM = "From: x@spam.test\r\nSubject: offer\r\n\r\nCheap viagra, buy now!\r\n"
CORPUS = {"configMaps": [{"name": "golden-ham", "label": "ham"},
                         {"name": "golden-spam", "label": "spam"}]}


def configmaps(namespace: str = "") -> dict[str, dict[str, Any]]:
    return {
        "golden-ham": {"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "golden-ham", "namespace": namespace},
                       "data": {"minutes.eml": HAM},
                       "binaryData": {"latin1.eml": base64.b64encode(
                           b"Subject: caf\xe9\r\n\r\nbonjour\r\n").decode()}},
        "golden-spam": {"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "golden-spam", "namespace": namespace},
                        "data": {"offer.eml": SPAM}},
    }


def spec(*rules: tuple[str, str, float], corpus: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    return {"policy": {"rules": [{"name": n, "target": "body", "pattern": p, "score": s}
                                 for n, p, s in rules]},
            "goldenCorpus": corpus or CORPUS}


GOOD = spec(("VIAGRA", "viagra", 12))
QUARANTINES_HAM = spec(("VIAGRA", "viagra", 12), ("MEETING", "meeting", 11))
LETS_SPAM_THROUGH = spec(("OTHER", "unrelated", 1))


def test_configmaps_become_golden_sets_with_their_bounds() -> None:
    stored = configmaps()
    sets = golden_sets({"configMaps": [{"name": "golden-ham", "label": "ham",
                                        "atMost": "ACCEPT"},
                                       {"name": "golden-spam", "label": "spam",
                                        "atLeast": "REJECT"}]}, stored.get)
    assert [(s.source, s.label, s.bound) for s in sets] == [
        ("ConfigMap golden-ham", "ham", "ACCEPT"), ("ConfigMap golden-spam", "spam", "REJECT")]
    assert sets[0].messages == (("minutes.eml", HAM.encode()),
                                ("latin1.eml", b"Subject: caf\xe9\r\n\r\nbonjour\r\n"))
    with pytest.raises(PolicyRejected) as missing:
        golden_sets({"configMaps": [{"name": "nope", "label": "ham"}]}, stored.get)
    assert missing.value.reason == "GoldenCorpusNotFound" and "'nope' not found" in \
        missing.value.summary()


def test_the_webhook_refuses_naming_messages_and_rules() -> None:
    stored = configmaps()
    assert golden_errors(GOOD, None, stored.get) == []
    errors = golden_errors(QUARANTINES_HAM, GOOD, stored.get)
    message = golden_message(errors)
    assert message.startswith("SpamPolicy change refused by its golden corpus: ")
    assert "golden ham ConfigMap golden-ham/minutes.eml would be QUARANTINE" in message
    assert "MEETING +11" in message
    # An UPDATE compares spam with the policy it replaces: the rule that stopped firing.
    errors = golden_errors(LETS_SPAM_THROUGH, GOOD, stored.get)
    assert len(errors) == 1 and "golden spam ConfigMap golden-spam/offer.eml would be " \
        "ACCEPT" in errors[0] and "no longer firing: VIAGRA +12" in errors[0]
    # No corpus, nothing to check (and nothing read).
    assert golden_errors({"policy": {"rules": []}}, None, lambda name: 1 / 0) == []
    # A missing corpus ConfigMap refuses: the change cannot be vouched for.
    assert golden_errors(GOOD, None, {}.get) == [
        "spec.goldenCorpus.configMaps[0]: ConfigMap 'golden-ham' not found"]


def test_bound_fields_must_match_the_label() -> None:
    bad = with_defaults(spec(("R", "x", 1), corpus={"configMaps": [
        {"name": "a", "label": "spam", "atMost": "TAG"},
        {"name": "b", "label": "ham", "atLeast": "TAG"}]}))
    errors = serving_errors(bad, "mail")
    assert "goldenCorpus.configMaps[0]: atMost is for ham; spam sets take atLeast" in errors
    assert "goldenCorpus.configMaps[1]: atLeast is for spam; ham sets take atMost" in errors


@pytest.fixture
def reconciler(cluster: Cluster) -> Iterator[Reconciler]:
    yield Reconciler(cluster.kube)


def test_the_operator_keeps_the_last_good_policy_when_the_corpus_breaks(
        cluster: Cluster, reconciler: Reconciler) -> None:
    kube, ns, name = cluster.kube, "golden", "mail"
    for body in configmaps(ns).values():
        kube.create(CONFIGMAPS, ns, body)
    kube.create(SPAMPOLICIES, ns, {"apiVersion": "mailwarden.dev/v1alpha1",
                                   "kind": "SpamPolicy",
                                   "metadata": {"name": name, "namespace": ns}, "spec": GOOD})
    reconciler.reconcile(ns, name)
    body = kube.get(SPAMPOLICIES, ns, name)
    good_hash = body["status"]["desiredPolicyHash"]
    assert condition(body, "PolicyValid")["status"] == "True"

    # A change the webhook would have refused arrives anyway (no webhook installed).
    kube.merge_patch(SPAMPOLICIES, ns, name, {"spec": {"policy": QUARANTINES_HAM["policy"]}})
    assert reconciler.reconcile(ns, name) == "rejected"
    body = kube.get(SPAMPOLICIES, ns, name)
    valid = condition(body, "PolicyValid")
    assert valid["status"] == "False" and valid["reason"] == "GoldenCorpusViolation"
    assert "golden-ham/minutes.eml would be QUARANTINE" in valid["message"]
    assert "MEETING +11" in valid["message"]
    deployment = kube.get(DEPLOYMENTS, ns, naming.workload_name(name))
    assert deployment["spec"]["template"]["metadata"]["annotations"][
        naming.HASH_ANNOTATION] == good_hash

    # Fixing the corpus (or the policy) lets it through on the next reconcile.
    kube.merge_patch(CONFIGMAPS, ns, "golden-ham", {"data": {"minutes.eml": "Subject: hi\r\n"
                                                             "\r\nhello\r\n"}})
    reconciler.reconcile(ns, name)
    body = kube.get(SPAMPOLICIES, ns, name)
    assert condition(body, "PolicyValid")["status"] == "True"
    assert body["status"]["desiredPolicyHash"] != good_hash


def test_a_passing_update_does_not_build_the_old_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailwarden_operator.spampolicy import webhook

    built: list[Any] = []
    real = webhook.build_bundle

    def counting(policy: Any, read: Any) -> Any:
        built.append(policy)
        return real(policy, read)

    monkeypatch.setattr(webhook, "build_bundle", counting)
    stored = configmaps()
    assert golden_errors(GOOD, LETS_SPAM_THROUGH, stored.get) == []
    # The candidate only: nothing to explain.
    assert [p["rules"] for p in built] == [GOOD["policy"]["rules"]]
    built.clear()
    assert golden_errors(LETS_SPAM_THROUGH, GOOD, stored.get)
    assert [p["rules"] for p in built] == [LETS_SPAM_THROUGH["policy"]["rules"],
                                           GOOD["policy"]["rules"]]


def test_directories_of_the_volume_are_golden_sets_of_the_namespace_only(tmp_path) -> None:
    """goldenCorpus.directories: <volume>/<namespace>/<path>, for corpora beyond ConfigMap
    sizes; a policy never reads another namespace's folder."""
    from mailwarden_operator.spampolicy.golden import CorpusVolume
    from mailwarden_operator.spampolicy.spec import golden_corpus_errors

    (tmp_path / "team-a" / "ham").mkdir(parents=True)
    (tmp_path / "team-a" / "ham" / "minutes.eml").write_text(HAM)
    (tmp_path / "team-a" / "ham" / ".hidden").write_text("not a message")
    (tmp_path / "team-b" / "ham").mkdir(parents=True)
    (tmp_path / "team-b" / "ham" / "secret.eml").write_text(HAM)
    (tmp_path / "team-a" / "escape").symlink_to(tmp_path / "team-b" / "ham")
    corpus = {"directories": [{"path": "ham", "label": "ham"}]}
    volume = CorpusVolume(tmp_path, "team-a")

    sets = golden_sets(corpus, {}.get, volume)
    assert [(s.source, s.label, s.bound, [m for m, _ in s.messages]) for s in sets] == [
        ("directory ham", "ham", "TAG", ["minutes.eml"])]
    errors = golden_errors(spec(("VIAGRA", "viagra", 12), ("MEETING", "meeting", 11),
                                corpus=corpus), None, {}.get, volume)
    assert errors == ["golden ham directory ham/minutes.eml would be QUARANTINE (score 11; "
                      "expected at most TAG); rules: MEETING +11"], errors

    def refused(path: str, at: CorpusVolume = volume) -> list[str]:
        with pytest.raises(PolicyRejected) as caught:
            golden_sets({"directories": [{"path": path, "label": "ham"}]}, {}.get, at)
        return [caught.value.reason, *caught.value.errors]

    # A symlink out of the namespace's folder, a missing one, and no volume at all.
    assert refused("escape") == ["GoldenCorpusInvalid", "goldenCorpus.directories[0]: "
                                 "'escape' leads outside the namespace's folder"]
    assert refused("nope")[0] == "GoldenCorpusNotFound"
    assert "no golden-corpus volume" in refused("ham", CorpusVolume(None, "team-a"))[1]
    # The CRD's rule, repeated: no absolute path, no `..`; something must be named.
    assert golden_corpus_errors({"directories": [
        {"path": "../team-b/ham", "label": "ham"}, {"path": "/etc", "label": "ham"},
        {"path": "a..b/ok", "label": "spam"}]}) == [
        "goldenCorpus.directories[0]: path is relative to the namespace's folder: no "
        "leading / and no ..",
        "goldenCorpus.directories[1]: path is relative to the namespace's folder: no "
        "leading / and no .."]
    assert golden_corpus_errors({}) == [
        "goldenCorpus names configMaps, directories or both"]
