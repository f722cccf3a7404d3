"""Measuring accuracy: the full classification path (`CompiledPolicy.classify`: rules,
lists, meta rules and the model) over labelled messages, as a ham false-positive rate and a
spam recall, where "spam" means the action is not ACCEPT.

Used by `benchmarks/accuracy.py` and the accuracy regression test; a measuring tool, so it
lives with the benchmarks and not in the filter pod. Cross-validation splits only the
messages it is given (the train split): the held-out test split is for the final figure
alone.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from filter_server.bayes.model import BayesModel
from filter_server.bayes.tokenize import tokenize
from filter_server.bayes.train import train_from_tokens
from filter_server.engine.compiled import CompiledPolicy, Envelope
from filter_server.message import parse_message
from filter_server.policy.loader import LoadedPolicy, policy_hash
from filter_server.policy.validate import load_policy_file


@dataclass(frozen=True)
class Labelled:
    name: str
    raw: bytes
    is_spam: bool


@dataclass
class Figures:
    ham: int = 0
    spam: int = 0
    false_positives: int = 0       # ham whose action is not ACCEPT
    caught: int = 0                # spam whose action is not ACCEPT
    fp_names: list[str] = field(default_factory=list)
    missed_names: list[str] = field(default_factory=list)

    @property
    def fp_rate(self) -> float:
        return self.false_positives / self.ham if self.ham else 0.0

    @property
    def recall(self) -> float:
        return self.caught / self.spam if self.spam else 0.0

    def add(self, other: "Figures") -> None:
        self.ham += other.ham
        self.spam += other.spam
        self.false_positives += other.false_positives
        self.caught += other.caught
        self.fp_names += other.fp_names
        self.missed_names += other.missed_names

    def __str__(self) -> str:
        return (f"ham FP {self.false_positives}/{self.ham} ({100 * self.fp_rate:.2f}%), "
                f"spam recall {self.caught}/{self.spam} ({100 * self.recall:.2f}%)")


def load_labelled(split_root: Path, part: str) -> list[Labelled]:
    """Messages of `split_root/part/{ham,spam}` (the layout `mailwarden corpus split` makes)."""
    out = []
    for label in ("ham", "spam"):
        directory = split_root / part / label
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory} is missing; run `mailwarden corpus split`")
        for path in sorted(directory.iterdir()):
            if not path.name.startswith("."):
                out.append(Labelled(path.name, path.read_bytes(), label == "spam"))
    return out


def compile_with_model(policy_file: Path, model: BayesModel | None) -> CompiledPolicy:
    """The policy of `policy_file` (a policy or a SpamPolicy resource) serving `model`."""
    policy = load_policy_file(policy_file)
    model_bytes = None
    if model is not None:
        model_bytes = model.to_bytes()
        weight = policy.get("model", {}).get("weight", 6.0)
        policy["model"] = {"file": "model.json.gz", "weight": weight}
    else:
        policy.pop("model", None)
    loaded = LoadedPolicy(policy, model_bytes, policy_hash(policy, model_bytes), "evaluate")
    return CompiledPolicy(loaded)


def classify_all(compiled: CompiledPolicy, messages: Sequence[Labelled]) -> Figures:
    figures = Figures()
    for m in messages:
        flagged = compiled.classify(m.raw, Envelope()).action != "ACCEPT"
        if m.is_spam:
            figures.spam += 1
            figures.caught += flagged
            if not flagged:
                figures.missed_names.append(m.name)
        else:
            figures.ham += 1
            figures.false_positives += flagged
            if flagged:
                figures.fp_names.append(m.name)
    return figures


def tokenize_all(messages: Sequence[Labelled]) -> list[set[str]]:
    return [tokenize(parse_message(m.raw)) for m in messages]


def _fold(name: str, seed: int, folds: int) -> int:
    digest = hashlib.sha256(f"cv{seed}:{name}".encode()).hexdigest()
    return int(digest[:8], 16) % folds


def cross_validate(messages: Sequence[Labelled], policy_file: Path, *, folds: int = 5,
                   seed: int = 0, tokens: Sequence[set[str]] | None = None,
                   train_options: dict | None = None,
                   progress: Callable[[str], None] = lambda line: None) -> Figures:
    """k-fold cross-validation of the full path: each fold is classified by the policy with
    a model trained on the other folds."""
    tokens = tokens if tokens is not None else tokenize_all(messages)
    assignment = [_fold(m.name, seed, folds) for m in messages]
    total = Figures()
    for f in range(folds):
        started = time.monotonic()
        train_idx = [i for i, k in enumerate(assignment) if k != f]
        model = train_from_tokens([tokens[i] for i in train_idx if messages[i].is_spam],
                                  [tokens[i] for i in train_idx if not messages[i].is_spam],
                                  progress=lambda line: None, **(train_options or {}))
        compiled = compile_with_model(policy_file, model)
        figures = classify_all(compiled, [m for m, k in zip(messages, assignment) if k == f])
        total.add(figures)
        progress(f"fold {f + 1}/{folds}: {figures} ({time.monotonic() - started:.1f}s)")
    return total
