"""Training: pruning to a size, calibration, and the `mailwarden train` command."""

from __future__ import annotations

import gzip
import mailbox
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from filter_server.bayes.model import BayesModel
from filter_server.bayes.train import (MIN_CALIBRATION_MESSAGES, _fold, prune, train,
                                       train_from_tokens)

SPAM_WORDS = ["winner", "prize", "cheap", "pills", "offer", "casino", "loan", "bonus"]
HAM_WORDS = ["meeting", "patch", "review", "lunch", "kernel", "build", "agenda", "thanks"]
SHARED = [f"common{i}" for i in range(40)]


def synthetic(n: int, words: list[str], seed: int) -> list[set[str]]:
    """Token sets: a few words of the class, some shared noise, sometimes a word of the other
    class, and a unique id (a hapax, which can never be a clue)."""
    rng = random.Random(seed)
    other = HAM_WORDS if words is SPAM_WORDS else SPAM_WORDS
    out = []
    for i in range(n):
        tokens = set(rng.sample(words, 3)) | set(rng.sample(SHARED, 5)) | {f"id{seed}-{i}"}
        if rng.random() < 0.03:
            tokens.add(rng.choice(other))
        out.append(tokens)
    return out


def quiet(line: str) -> None:
    pass


def test_trained_model_separates_and_is_calibrated():
    spam, ham = synthetic(80, SPAM_WORDS, 1), synthetic(120, HAM_WORDS, 2)
    model = train_from_tokens(spam, ham, progress=quiet)
    assert model.calibration is not None
    assert model.trained["ham_messages"] == 120 and model.trained["spam_messages"] == 80
    assert model.spam_probability({"winner", "prize", "common1"}) > 0.9
    assert model.spam_probability({"meeting", "patch", "common1"}) < 0.1
    # unseen messages of each kind land on the right side
    assert all(model.spam_probability(t) > 0.5 for t in synthetic(20, SPAM_WORDS, 3)
               if not t & set(HAM_WORDS))
    assert all(model.spam_probability(t) < 0.5 for t in synthetic(20, HAM_WORDS, 4)
               if not t & set(SPAM_WORDS))


def test_pruning_keeps_only_tokens_that_can_be_clues():
    spam, ham = synthetic(80, SPAM_WORDS, 1), synthetic(120, HAM_WORDS, 2)
    model = train_from_tokens(spam, ham, progress=quiet)
    assert not any(t.startswith("id") for t in model.counts)       # hapaxes dropped
    assert not any(t.startswith("common") for t in model.counts)   # neutral words dropped
    assert set(SPAM_WORDS) <= set(model.counts)
    assert model.trained["tokens_seen"] > len(model.counts)


def test_pruning_to_a_size_drops_the_rarest_first():
    counts = {f"spam{i}": (i + 2, 0) for i in range(3000)}
    full = BayesModel(5000, 5000, counts)
    small = prune(full, 8 * 1024)
    assert len(small.to_bytes()) <= 8 * 1024
    assert 0 < len(small.counts) < len(counts)
    kept = min(sum(c) for c in small.counts.values())
    dropped = max(sum(c) for t, c in counts.items() if t not in small.counts)
    assert kept >= dropped
    with pytest.raises(ValueError, match="too small"):
        prune(full, 10)


def test_calibration_needs_enough_messages():
    progress = []
    few = MIN_CALIBRATION_MESSAGES - 1
    model = train_from_tokens(synthetic(few, SPAM_WORDS, 1), synthetic(50, HAM_WORDS, 2),
                              progress=progress.append)
    assert model.calibration is None
    assert any("calibration skipped" in line for line in progress)
    assert train_from_tokens(synthetic(40, SPAM_WORDS, 1), synthetic(40, HAM_WORDS, 2),
                             calibration_folds=0, progress=quiet).calibration is None
    with pytest.raises(ValueError, match="folds"):
        train_from_tokens(synthetic(40, SPAM_WORDS, 1), synthetic(40, HAM_WORDS, 2),
                          calibration_folds=1, progress=quiet)
    with pytest.raises(ValueError, match="at least one ham and one spam"):
        train_from_tokens([], synthetic(40, HAM_WORDS, 2), progress=quiet)


def test_duplicates_share_a_calibration_fold():
    tokens = {"a", "b", "c"}
    assert _fold(set(tokens), 5) == _fold({"c", "b", "a"}, 5)


def test_training_is_deterministic():
    spam, ham = synthetic(60, SPAM_WORDS, 1), synthetic(60, HAM_WORDS, 2)
    first = train_from_tokens(spam, ham, progress=quiet).to_bytes()
    assert train_from_tokens(spam, ham, progress=quiet).to_bytes() == first


def write_corpus(root: Path, spam: int = 40, ham: int = 40) -> tuple[Path, Path]:
    for label, words, n in (("spam", SPAM_WORDS, spam), ("ham", HAM_WORDS, ham)):
        directory = root / label
        (directory / "sub").mkdir(parents=True)
        for i, tokens in enumerate(synthetic(n, words, 7 if label == "spam" else 8)):
            body = " ".join(sorted(t for t in tokens if not t.startswith("id")))
            target = directory / ("sub" if i % 2 else "") / f"{i}.eml"
            target.write_text(f"From: x{i}@example.com\nSubject: note {i}\n\n{body}\n")
        (directory / ".hidden").write_text("not a message")
    return root / "ham", root / "spam"


def test_train_reads_directories_recursively(tmp_path):
    ham_dir, spam_dir = write_corpus(tmp_path)
    model = train(ham_dir, spam_dir, progress=quiet)
    assert model.trained["ham_messages"] == 40 and model.trained["spam_messages"] == 40
    with pytest.raises(FileNotFoundError):
        train(tmp_path / "nope", spam_dir, progress=quiet)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailwarden.cli", "train", *args],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_cli_writes_a_loadable_model_and_reports_progress(tmp_path):
    ham_dir, spam_dir = write_corpus(tmp_path)
    out = tmp_path / "model.json.gz"
    result = run_cli("--ham", str(ham_dir), "--spam", str(spam_dir), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "spam: 40 messages from" in result.stderr
    assert "calibration: round 3/3, fold 5/5 scored" in result.stderr
    assert f"wrote {out}" in result.stderr
    model = BayesModel.from_bytes(out.read_bytes())
    assert model.calibration is not None
    assert json.loads(gzip.decompress(out.read_bytes()))["format"] == "mailwarden-bayes/3"
    assert not (tmp_path / "model.json.gz.tmp").exists()


@pytest.mark.parametrize("extra,message", [
    (["--max-kib", "0"], "--max-kib must be at least 1"),
    (["--calibration-folds", "1"], "calibration folds must be 0"),
])
def test_cli_rejects_bad_options(tmp_path, extra, message):
    ham_dir, spam_dir = write_corpus(tmp_path)
    result = run_cli("--ham", str(ham_dir), "--spam", str(spam_dir),
                     "-o", str(tmp_path / "m.gz"), *extra)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_explains_missing_or_empty_input(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("--ham", str(tmp_path / "missing"), "--spam", str(tmp_path / "empty"),
                     "-o", str(tmp_path / "m.gz"))
    assert result.returncode == 2 and "missing does not exist" in result.stderr
    result = run_cli("--ham", str(tmp_path / "empty"), "--spam", str(tmp_path / "empty"),
                     "-o", str(tmp_path / "m.gz"))
    assert result.returncode == 2 and "need at least one ham and one spam" in result.stderr
    ham_dir, spam_dir = write_corpus(tmp_path / "c")
    result = run_cli("--ham", str(ham_dir), "--spam", str(spam_dir),
                     "-o", str(tmp_path / "no" / "such" / "dir" / "m.gz"))
    assert result.returncode == 2 and "/no/such/dir does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_output_does_not_depend_on_the_process(tmp_path):
    """Python randomises string hashing per process; the model (and so the policy hash the
    filter pods report) must still be byte-for-byte the same for the same messages."""
    ham_dir, spam_dir = write_corpus(tmp_path)
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"model{seed}.json.gz"
        result = subprocess.run(
            [sys.executable, "-m", "mailwarden.cli", "train", "--ham", str(ham_dir),
             "--spam", str(spam_dir), "-o", str(out)], capture_output=True, text=True,
            timeout=120, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONHASHSEED": seed})
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("folds", ["5", "3", "0"])
def test_cli_fits_and_reports_rates_per_action_with_any_calibration_folds(tmp_path, folds):
    """Every --calibration-folds value fits the policy and prints the expected rates (a value
    other than 5 used to skip fitting silently); 0 serves raw combined scores."""
    ham_dir, spam_dir = write_corpus(tmp_path, spam=60, ham=60)
    out, policy_out = tmp_path / "model.json.gz", tmp_path / "fitted.yaml"
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n- {name: CASINO, target: body, pattern: casino, score: 1}\n")
    result = run_cli("--ham", str(ham_dir), "--spam", str(spam_dir), "-o", str(out),
                     "--policy", str(policy), "--policy-out", str(policy_out),
                     "--calibration-folds", folds)
    assert result.returncode == 0, result.stderr
    for action in ("TAG", "QUARANTINE", "REJECT"):
        assert re.search(rf"{action} \(score >= +[\d.]+\): ham \d+/\d+ \([\d.]+%\), "
                         rf"spam \d+/\d+", result.stdout), result.stdout
    model = BayesModel.from_bytes(out.read_bytes())
    assert (model.calibration is None) == (folds == "0")
    fitted = yaml.safe_load(policy_out.read_text())
    assert set(fitted["thresholds"]) == {"tag", "quarantine", "reject"}
    assert fitted["model"]["weight"] > 0 and fitted["rules"][0]["score"] >= 0


def test_cli_reads_maildir_and_mbox(tmp_path):
    ham_dir, spam_dir = write_corpus(tmp_path / "files")
    maildir = mailbox.Maildir(str(tmp_path / "Ham"), create=True)
    for path in sorted(ham_dir.rglob("*.eml")):
        maildir.add(path.read_bytes())
    box = mailbox.mbox(str(tmp_path / "spam.mbox"))
    for path in sorted(spam_dir.rglob("*.eml")):
        box.add(mailbox.mboxMessage(path.read_bytes()))
    box.close()
    out = tmp_path / "model.json.gz"
    result = run_cli("--ham", str(tmp_path / "Ham"), "--spam", str(tmp_path / "spam.mbox"),
                     "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert f"ham: reading {tmp_path / 'Ham'} (Maildir, 40 files)" in result.stderr
    assert f"spam: 40 messages from {tmp_path / 'spam.mbox'}" in result.stderr
    model = BayesModel.from_bytes(out.read_bytes())
    assert model.trained["ham_messages"] == 40 and model.trained["spam_messages"] == 40
