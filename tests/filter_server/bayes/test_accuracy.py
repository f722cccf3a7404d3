"""Accuracy regression: the model trained on the train split of the SpamAssassin public corpus,
with the example policy's rules, classifies the held-out test split at least as well as it
did when this test was written (benchmarks/accuracy.py prints the same figures):

    ham false positives 1/840 (0.12%), spam recall 323/354 (91.24%)

(Before issue 21 it was 2/840 and 350/354. The tokenizer no longer learns the corpus's
relays, list addresses and link paths, and TAG needs a model sure of spam (p >= 0.99) or
rules to help: on mail from other sources that cut false positives several-fold
(benchmarks/cross_source.py), and costs recall on the corpus's own test split. It was
330/354 until HTML-only mail scored only without a link into the sender's own domain
(HTML_ONLY_UNRELATED_LINKS, docs/model.md "Built-in traits"): 7 test spam of 2002 bulk
senders linking to their own domains fell below TAG, while on the other release of the
corpus the newsletters tagged fell from 17-21% to 7-15% and the spam caught at 0.5% FPR
rose 6-7 points.)

"Spam" means the action is not ACCEPT (`CompiledPolicy.classify`, rules + lists + model).
Training and scoring are deterministic, so a drop means the tokenizer, the model, the
calibration or the policy got worse, not noise. Takes ~15-30 s (tokenizing 4,852 messages
and training with cross-validated calibration).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.evaluate import (classify_all, compile_with_model, load_labelled,
                                          tokenize_all)
from filter_server.bayes.model import BayesModel
from filter_server.bayes.train import train_from_tokens
from mailwarden_local.corpus import DEFAULT_CORPUS, HAM_GROUPS, SPAM_GROUPS, split_corpus

ROOT = Path(__file__).resolve().parents[3]
POLICY = ROOT / "examples" / "spampolicy.yaml"
MAX_FALSE_POSITIVES = 1      # of 840 test ham
MIN_SPAM_CAUGHT = 323        # of 354 test spam
MAX_MODEL_BYTES = 768 * 1024

pytestmark = pytest.mark.skipif(
    not all((DEFAULT_CORPUS / g).is_dir() for g in HAM_GROUPS + SPAM_GROUPS),
    reason=f"SpamAssassin corpus not in {DEFAULT_CORPUS}; scripts/bootstrap.sh fetches it")


def test_held_out_accuracy_does_not_regress(tmp_path):
    split = split_corpus(DEFAULT_CORPUS, tmp_path / "split")
    train = load_labelled(split.root, "train")
    test = load_labelled(split.root, "test")
    assert (len(train), len(test)) == (4852, 1194), "the corpus or the split rule changed"

    tokens = tokenize_all(train)
    model = train_from_tokens([t for t, m in zip(tokens, train) if m.is_spam],
                              [t for t, m in zip(tokens, train) if not m.is_spam],
                              progress=lambda line: None)
    data = model.to_bytes()
    assert len(data) <= MAX_MODEL_BYTES
    model = BayesModel.from_bytes(data)   # what the filter pods load

    figures = classify_all(compile_with_model(POLICY, model), test)
    assert (figures.ham, figures.spam) == (840, 354)
    assert figures.false_positives <= MAX_FALSE_POSITIVES, \
        f"{figures}; false positives: {figures.fp_names}"
    assert figures.caught >= MIN_SPAM_CAUGHT, f"{figures}; missed: {figures.missed_names}"
    # the false-positive target of issues 2 and 5 (their 97% recall is not met by the
    # fitted example policy: issue 21's cross-source work trades it, see the docstring)
    assert figures.fp_rate <= 0.003
