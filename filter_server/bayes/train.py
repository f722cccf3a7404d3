"""Training the statistical model from directories of labelled raw messages."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from filter_server.bayes.model import MIN_STRENGTH, BayesModel, token_probability
from filter_server.bayes.tokenize import tokenize
from filter_server.engine.message import parse_message

# A model ships inside a ConfigMap next to the policy (1 MiB in all); stay well below.
DEFAULT_MAX_BYTES = 768 * 1024


def message_files(directory: Path) -> list[Path]:
    """Every regular, non-hidden file under `directory`, in a stable order."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in
                                             p.relative_to(directory).parts))


def count_tokens(files: Iterable[Path], counts: Counter, label: str,
                 progress: Callable[[str], None]) -> int:
    n = 0
    files = list(files)
    for path in files:
        counts.update(tokenize(parse_message(path.read_bytes())))
        n += 1
        if n % 500 == 0 or n == len(files):
            progress(f"{label}: {n}/{len(files)} messages")
    return n


def prune(model: BayesModel, max_bytes: int) -> BayesModel:
    """Drop tokens that cannot influence a score, then the rarest, until the file fits."""
    useful = {t: c for t, c in model.counts.items()
              if sum(c) >= 2 and abs(token_probability(c[0], c[1], model.nspam, model.nham)
                                     - 0.5) >= MIN_STRENGTH}
    ranked = sorted(useful.items(), key=lambda item: (-sum(item[1]), item[0]))
    keep = len(ranked)
    while True:
        candidate = BayesModel(model.nspam, model.nham, dict(ranked[:keep]), model.trained)
        size = len(candidate.to_bytes())
        if size <= max_bytes or keep == 0:
            return candidate
        keep = int(keep * max_bytes / size * 0.97)


def train(ham_dir: Path, spam_dir: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
          progress: Callable[[str], None] | None = None) -> BayesModel:
    progress = progress or (lambda line: print(line, file=sys.stderr))
    ham_files, spam_files = message_files(ham_dir), message_files(spam_dir)
    if not ham_files or not spam_files:
        raise ValueError(f"need at least one ham and one spam message "
                         f"(found {len(ham_files)} ham in {ham_dir}, "
                         f"{len(spam_files)} spam in {spam_dir})")
    started = time.monotonic()
    spam_counts: Counter = Counter()
    ham_counts: Counter = Counter()
    nspam = count_tokens(spam_files, spam_counts, "spam", progress)
    nham = count_tokens(ham_files, ham_counts, "ham", progress)
    counts = {t: (spam_counts.get(t, 0), ham_counts.get(t, 0))
              for t in spam_counts.keys() | ham_counts.keys()}
    full = BayesModel(nspam, nham, counts, {"ham_messages": nham, "spam_messages": nspam,
                                            "tokens_seen": len(counts)})
    model = prune(full, max_bytes)
    progress(f"trained on {nham} ham + {nspam} spam in {time.monotonic() - started:.1f}s; "
             f"kept {len(model.counts)} of {len(counts)} tokens")
    return model
