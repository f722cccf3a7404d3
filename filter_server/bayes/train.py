"""Training the statistical model from labelled raw messages.

    tokenize every message once
    -> k-fold cross-validation on the training messages: raw scores of each message from a
       model that did not see it -> isotonic calibration (calibrate.py)
    -> count tokens over all messages -> keep the tokens that can be clues -> if the file is
       still too large, drop the rarest until it fits
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

from filter_server.bayes.calibrate import Calibration, fit_isotonic
from filter_server.bayes.model import DEFAULT_PARAMS, BayesModel, ModelParams
from filter_server.bayes.tokenize import tokenize
from filter_server.message import parse_message

# A model ships inside a ConfigMap next to the policy (1 MiB in all); stay well below.
DEFAULT_MAX_BYTES = 768 * 1024
DEFAULT_CALIBRATION_FOLDS = 5
# Below this many messages of either class, cross-validated calibration is too noisy to
# trust: the model then reports the raw combined score.
MIN_CALIBRATION_MESSAGES = 30
# Messages per calibration step at least (see calibrate.fit_isotonic), and how many
# differently drawn k-fold rounds score each message: pooling several rounds keeps a few
# borderline messages from deciding where the steps of the calibration fall.
CALIBRATION_MIN_BLOCK = 25
CALIBRATION_REPEATS = 3

Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def message_files(directory: Path) -> list[Path]:
    """Every regular, non-hidden file under `directory`, in a stable order."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in
                                             p.relative_to(directory).parts))


def tokenize_files(files: Sequence[Path], label: str, progress: Progress) -> list[set[str]]:
    out = []
    for n, path in enumerate(files, 1):
        out.append(tokenize(parse_message(path.read_bytes())))
        if n % 500 == 0 or n == len(files):
            progress(f"{label}: tokenized {n}/{len(files)} messages")
    return out


def _fold(tokens: set[str], folds: int, repeat: int = 0) -> int:
    # By content, so exact duplicates share a fold and cannot vouch for each other.
    text = "\n".join(sorted(tokens)) + (f"\n#{repeat}" if repeat else "")
    digest = hashlib.sha1(text.encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:4], "big") % folds


def _model(spam: Iterable[set[str]], ham: Iterable[set[str]], params: ModelParams,
           trained: dict | None = None) -> BayesModel:
    spam_counts: Counter = Counter()
    ham_counts: Counter = Counter()
    nspam = nham = 0
    for tokens in spam:
        spam_counts.update(tokens)
        nspam += 1
    for tokens in ham:
        ham_counts.update(tokens)
        nham += 1
    counts = {t: (spam_counts.get(t, 0), ham_counts.get(t, 0))
              for t in spam_counts.keys() | ham_counts.keys()}
    return BayesModel(nspam, nham, counts, trained or {}, params)


def cross_validated_scores(spam: Sequence[set[str]], ham: Sequence[set[str]],
                           params: ModelParams, folds: int, progress: Progress,
                           repeats: int = 1) -> list[tuple[float, bool]]:
    """(raw score, is spam) of every message that has clues, each scored by a model trained
    on the other folds; with `repeats` > 1, once per differently drawn fold assignment."""
    scored: list[tuple[float, bool]] = []
    for r in range(repeats):
        spam_fold = [_fold(t, folds, r) for t in spam]
        ham_fold = [_fold(t, folds, r) for t in ham]
        for f in range(folds):
            model = _model((t for t, k in zip(spam, spam_fold) if k != f),
                           (t for t, k in zip(ham, ham_fold) if k != f), params)
            for sets, fold_of, label in ((spam, spam_fold, True), (ham, ham_fold, False)):
                for tokens, k in zip(sets, fold_of):
                    if k == f:
                        raw = model.raw_score(tokens)
                        if raw is not None:
                            scored.append((raw, label))
            progress(f"calibration: round {r + 1}/{repeats}, fold {f + 1}/{folds} scored")
    return scored


def prune(model: BayesModel, max_bytes: int) -> BayesModel:
    """Drop tokens that cannot influence a score, then the rarest, until the file fits."""
    useful = {t: c for t, c in model.counts.items() if model.can_be_clue(*c)}
    ranked = sorted(useful.items(), key=lambda item: (-sum(item[1]), item[0]))
    keep = len(ranked)
    while True:
        candidate = BayesModel(model.nspam, model.nham, dict(ranked[:keep]),
                               {**model.trained, "tokens_kept": keep}, model.params,
                               model.calibration)
        size = len(candidate.to_bytes())
        if size <= max_bytes:
            return candidate
        if keep == 0:
            raise ValueError(f"even a model without tokens takes {size} bytes; the size "
                             f"limit of {max_bytes} bytes is too small")
        keep = int(keep * max_bytes / size * 0.97)


def train_from_tokens(spam: Sequence[set[str]], ham: Sequence[set[str]], *,
                      params: ModelParams = DEFAULT_PARAMS,
                      calibration_folds: int = DEFAULT_CALIBRATION_FOLDS,
                      max_bytes: int = DEFAULT_MAX_BYTES,
                      progress: Progress | None = None) -> BayesModel:
    """Train on token sets (one per message); see the module docstring."""
    progress = progress or _stderr
    if not spam or not ham:
        raise ValueError(f"need at least one ham and one spam message "
                         f"(got {len(ham)} ham, {len(spam)} spam)")
    if calibration_folds == 1 or calibration_folds < 0:
        raise ValueError("calibration folds must be 0 (no calibration) or at least 2")
    calibration: Calibration | None = None
    if calibration_folds and min(len(spam), len(ham)) >= MIN_CALIBRATION_MESSAGES:
        scored = cross_validated_scores(spam, ham, params, calibration_folds, progress,
                                        CALIBRATION_REPEATS)
        if scored:
            calibration = fit_isotonic([s for s, _ in scored], [y for _, y in scored],
                                       min_block=CALIBRATION_MIN_BLOCK * CALIBRATION_REPEATS)
    elif calibration_folds:
        progress(f"calibration skipped: it needs at least {MIN_CALIBRATION_MESSAGES} "
                 "messages of each class; the model reports raw combined scores")
    full = _model(spam, ham, params)
    full.trained = {"ham_messages": len(ham), "spam_messages": len(spam),
                    "tokens_seen": len(full.counts),
                    "calibration_folds": calibration_folds if calibration else 0}
    full.calibration = calibration
    return prune(full, max_bytes)


def train(ham_dir: Path, spam_dir: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
          calibration_folds: int = DEFAULT_CALIBRATION_FOLDS,
          params: ModelParams = DEFAULT_PARAMS,
          progress: Progress | None = None) -> BayesModel:
    progress = progress or _stderr
    ham_files, spam_files = message_files(ham_dir), message_files(spam_dir)
    if not ham_files or not spam_files:
        raise ValueError(f"need at least one ham and one spam message "
                         f"(found {len(ham_files)} ham in {ham_dir}, "
                         f"{len(spam_files)} spam in {spam_dir})")
    started = time.monotonic()
    spam = tokenize_files(spam_files, "spam", progress)
    ham = tokenize_files(ham_files, "ham", progress)
    model = train_from_tokens(spam, ham, params=params, calibration_folds=calibration_folds,
                              max_bytes=max_bytes, progress=progress)
    progress(f"trained on {len(ham)} ham + {len(spam)} spam in "
             f"{time.monotonic() - started:.1f}s; kept {len(model.counts)} of "
             f"{model.trained['tokens_seen']} tokens")
    return model
