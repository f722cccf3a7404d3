"""`mailwarden policy test POLICY --corpus DIR` (issue 18): CI for policies. The real command
in a subprocess; exit 0 when every golden message is acceptable, 1 with one line per
misclassified message naming the rules, 2 for input it cannot use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HAM = b"From: alice@example.org\r\nSubject: minutes\r\n\r\nThe meeting minutes are attached.\r\n"
SPAM = b"From: x@spam.test\r\nSubject: offer\r\n\r\nCheap viagra, buy now!\r\n"


def mailwarden(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailwarden.cli", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def policy_file(path: Path, *rules: tuple[str, str, float], **spec: Any) -> Path:
    policy = {"rules": [{"name": n, "target": "body", "pattern": p, "score": s}
                        for n, p, s in rules]}
    document: Any = policy
    if spec:
        document = {"apiVersion": "mailwarden.dev/v1alpha1", "kind": "SpamPolicy",
                    "metadata": {"name": "mail"}, "spec": {"policy": policy, **spec}}
    path.write_text(yaml.safe_dump(document))
    return path


def corpus(root: Path, layout: dict[str, dict[str, bytes]]) -> Path:
    for directory, messages in layout.items():
        (root / directory).mkdir(parents=True)
        for name, raw in messages.items():
            (root / directory / name).write_bytes(raw)
    return root


def test_ham_spam_layout_pass_and_fail(tmp_path: Path) -> None:
    golden = corpus(tmp_path / "golden", {"ham": {"minutes.eml": HAM},
                                          "spam": {"offer.eml": SPAM}})
    good = policy_file(tmp_path / "good.yaml", ("VIAGRA", "viagra", 12))
    result = mailwarden("policy", "test", str(good), "--corpus", str(golden))
    assert result.returncode == 0, result.stderr
    assert "2 golden messages (1 ham, 1 spam): all acceptable" in result.stdout

    bad = policy_file(tmp_path / "bad.yaml", ("VIAGRA", "viagra", 12), ("MEETING", "meeting", 25))
    result = mailwarden("policy", "test", str(bad), "--corpus", str(golden))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"golden ham {golden}/ham/minutes.eml would be REJECT" in result.stdout
    assert "rules: MEETING +25" in result.stdout
    assert "1 misclassified" in result.stderr

    weak = policy_file(tmp_path / "weak.yaml", ("OTHER", "unrelated", 1))
    result = mailwarden("policy", "test", str(weak), "--corpus", str(golden),
                        "--baseline", str(good))
    assert result.returncode == 1
    assert "would be ACCEPT" in result.stdout and "no longer firing: VIAGRA +12" in result.stdout


def test_a_spampolicy_reads_the_configmap_directories_it_names(tmp_path: Path) -> None:
    golden = corpus(tmp_path / "golden", {"golden-spam": {"offer.eml": SPAM}})
    strict = policy_file(tmp_path / "sp.yaml", ("VIAGRA", "viagra", 12), goldenCorpus={
        "configMaps": [{"name": "golden-spam", "label": "spam", "atLeast": "REJECT"}]})
    result = mailwarden("policy", "test", str(strict), "--corpus", str(golden))
    assert result.returncode == 1
    assert "would be QUARANTINE (score 12; expected at least REJECT)" in result.stdout


def test_a_spampolicy_reads_the_volume_directories_it_names(tmp_path: Path) -> None:
    """goldenCorpus.directories[].path: DIR stands for the namespace's folder of the
    golden-corpus volume."""
    golden = corpus(tmp_path / "golden", {"team/ham": {"minutes.eml": HAM}})
    blunt = policy_file(tmp_path / "sp.yaml", ("MEETING", "meeting", 25), goldenCorpus={
        "directories": [{"path": "team/ham", "label": "ham", "atMost": "ACCEPT"}]})
    result = mailwarden("policy", "test", str(blunt), "--corpus", str(golden))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"golden ham {golden}/team/ham/minutes.eml would be REJECT" in result.stdout
    missing = policy_file(tmp_path / "sp2.yaml", ("MEETING", "meeting", 25), goldenCorpus={
        "directories": [{"path": "absent", "label": "ham"}]})
    result = mailwarden("policy", "test", str(missing), "--corpus", str(golden))
    assert result.returncode == 2 and "spec.goldenCorpus names directory absent" in \
        result.stderr, result.stderr


def test_unusable_input_is_one_clear_line(tmp_path: Path) -> None:
    good = policy_file(tmp_path / "good.yaml", ("VIAGRA", "viagra", 12))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ((str(good), "--corpus", str(tmp_path / "missing")), "not a directory"),
        ((str(good), "--corpus", str(empty)), "holds neither ham/ nor spam/"),
        ((str(policy_file(tmp_path / "broken.yaml", ("X", "(unclosed", 1))), "--corpus",
          str(empty)), "rules[0].pattern"),
        ((str(policy_file(tmp_path / "sp.yaml", ("V", "v", 1), goldenCorpus={
            "configMaps": [{"name": "absent", "label": "ham"}]})), "--corpus", str(empty)),
         "missing (spec.goldenCorpus names ConfigMap absent)"),
    ]
    for args, expected in cases:
        result = mailwarden("policy", "test", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
