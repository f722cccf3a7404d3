#!/usr/bin/env python3
"""What the safety checks of issue 18 cost, per message, on the corpus test split with the
example policy and its model:

    .venv/bin/python benchmarks/shadow_cost.py [--rounds 3] [--limit 2000]

  live       CompiledPolicy.classify of the live policy (what every call pays anyway)
  offer      ShadowEvaluator.offer with sample rate 1: what the request path adds
             (a coin toss, the CPU bucket, a queue put)
  evaluate   ShadowEvaluator.evaluate: the shadow thread's classify + comparison + metrics
  golden     check_corpus: the golden-corpus check of admission, per message

The candidate is the example policy with one rule's score raised and one rule added (a
distinct hash, real verdict changes). CPU time is `time.process_time()`, best of
`--rounds`; figures are printed, never asserted. With `--shadow-cpu-fraction F` a pod
evaluates at most F / evaluate-seconds messages per second per worker in shadow.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prometheus_client import CollectorRegistry  # noqa: E402

from benchmarks.systems.mailwarden import example_policy  # noqa: E402
from filter_server.engine.compiled import CompiledPolicy, Envelope  # noqa: E402
from filter_server.engine.golden import GoldenSet, check_corpus  # noqa: E402
from filter_server.policy.loader import LoadedPolicy, policy_hash  # noqa: E402
from filter_server.policy.validate import apply_defaults  # noqa: E402
from filter_server.server.shadow import ShadowEvaluator, ShadowMetrics  # noqa: E402
from mailwarden_local.corpus import DEFAULT_CORPUS, Split  # noqa: E402
from mailwarden_local.model import ensure_model  # noqa: E402


def _compiled(policy: dict, model_bytes: bytes) -> CompiledPolicy:
    policy = apply_defaults(policy)
    return CompiledPolicy(LoadedPolicy(policy, model_bytes, policy_hash(policy, model_bytes),
                                       "bench"))


def _best(rounds: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=2000,
                        help="messages of the test split to use (golden corpus size too)")
    args = parser.parse_args()

    model_bytes, _ = ensure_model(DEFAULT_CORPUS, DEFAULT_CORPUS.parent,
                                  lambda line: print(line, file=sys.stderr))
    split = Split(DEFAULT_CORPUS.parent / "split")
    ham, spam = split.files("test", "ham"), split.files("test", "spam")
    # Alternate ham and spam so a --limit keeps both.
    paths = [p for pair in zip(ham, spam) for p in pair][:args.limit]
    messages = [p.read_bytes() for p in paths]
    ham_count = sum(1 for p in paths if p in set(ham))
    policy = example_policy()   # the model as a file: held here as bytes instead
    live = _compiled(policy, model_bytes)
    candidate_policy = copy.deepcopy(policy)
    candidate_policy["rules"][0]["score"] = float(candidate_policy["rules"][0]["score"]) + 3
    candidate_policy["rules"].append({"name": "BENCH_CLICK", "target": "body",
                                      "pattern": r"(?i)\bclick here\b", "score": 2.5})
    candidate = _compiled(candidate_policy, model_bytes)

    envelope = Envelope(mail_from="sender@example.com", recipients=("user@example.com",))
    verdicts = [live.classify(raw, envelope) for raw in messages]
    shadow = ShadowEvaluator(Path("/nonexistent"), ShadowMetrics(CollectorRegistry()),
                             logging.getLogger("bench"), sample_rate=1.0, cpu_fraction=1.0,
                             queue_bytes=1 << 40)
    shadow.current = candidate
    n = len(messages)

    def offer_all() -> None:
        for raw, verdict in zip(messages, verdicts):
            shadow.offer(raw, envelope, None, verdict)
        # drain what was queued, outside the figure's meaning but inside its loop
        shadow._queue = type(shadow._queue)()
        shadow._queued = 0

    figures = {
        "live": _best(args.rounds, lambda: [live.classify(r, envelope) for r in messages]),
        "offer": _best(args.rounds, offer_all),
        "evaluate": _best(args.rounds, lambda: [shadow.evaluate(r, envelope, None, v)
                                                for r, v in zip(messages, verdicts)]),
    }
    hams = set(ham)
    sets = [GoldenSet("ham", "ham", messages=tuple((p.name, r) for p, r in zip(paths, messages)
                                                    if p in hams)),
            GoldenSet("spam", "spam", messages=tuple((p.name, r) for p, r in
                                                      zip(paths, messages) if p not in hams))]
    started = time.perf_counter()
    report = check_corpus(candidate, [s for s in sets if s.messages])
    golden_wall = time.perf_counter() - started
    figures["golden"] = _best(args.rounds, lambda: check_corpus(
        candidate, [s for s in sets if s.messages]))

    changed = sum(1 for raw, v in zip(messages, verdicts)
                  if candidate.classify(raw, envelope).action != v.action)
    print(f"messages: {n} of the test split ({ham_count} ham), "
          f"load {os.getloadavg()[0]:.2f}")
    for name, seconds in figures.items():
        print(f"{name:9s} {seconds * 1e3 / n:8.3f} ms CPU per message")
    print(f"golden check of {n} messages: {golden_wall:.2f} s wall, "
          f"{len(report.violations)} violations of the default bounds by the candidate")
    print(f"candidate changes the action of {changed} of {n} messages")
    per_message = figures["evaluate"] / n
    for fraction in (0.05, 0.1, 0.25):
        print(f"--shadow-cpu-fraction {fraction}: at most {fraction / per_message:,.0f} "
              "shadow evaluations per second per worker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
