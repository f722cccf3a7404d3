"""Fingerprints of everything the classify path computes, over the corpus test split, so a
speed change can be shown to change no verdict.

    .venv/bin/python -m tests.filter_server.perf.verdicts --check    # compare with the stored fingerprints
    .venv/bin/python -m tests.filter_server.perf.verdicts --write    # store new ones (only after a change
                                                       # that is MEANT to change verdicts)

Three policies classify every test-split message: the example policy with the model local
mode trains (`example`), the same with 1,000 generated rules (`rules1000`, the committed
fixture `rules-1000.json.gz`, made by benchmarks/rulegen.py from the train split), and the
example policy plus rules on every header (`ALL`), allow/block lists and signatures that
corpus messages hit (`coverage`). Damaged copies of a part of the split (CRLF line ends,
cut short, bytes overwritten, header only) go through `coverage` too, so the error paths of
the parser are fingerprinted as well.

A fingerprint is the first 10 hex digits of the sha256 of the repr of what was computed:
for a verdict its action, score, hits (name, score, description), spam probability and
fired rules; for a message its parsed fields and its token set. repr of a float is exact,
so a difference in the last bit of a score shows.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from filter_server.bayes.tokenize import tokenize
from filter_server.engine.compiled import CompiledPolicy, Envelope, Verdict
from filter_server.message import ParsedMessage, parse_message
from filter_server.policy.loader import LoadedPolicy, policy_hash
from filter_server.policy.validate import apply_defaults, load_policy_file, validate_policy

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
GOLDEN = HERE / "golden-verdicts.json.gz"
RULES_1000 = HERE / "rules-1000.json.gz"
EXAMPLE_POLICY = ROOT / "examples" / "spampolicy.yaml"
DAMAGED_SAMPLE = 300          # messages of the split that also go in damaged
_RETURN_PATH = re.compile(rb"^Return-Path:\s*<?([^>\s]*)>?", re.M | re.I)

# Extra rules and lists for the `coverage` policy: every target kind the example policy
# does not use, with values that occur in the test split.
COVERAGE_RULES = [
    {"name": "ALLH_OUTLOOK", "target": "header", "header": "ALL",
     "pattern": r"(?i)^x-mailer: .*outlook", "score": 0.7},
    {"name": "ALLH_LIST", "target": "header", "header": "ALL",
     "pattern": r"(?i)^list-(id|unsubscribe): ", "score": -0.4},
    {"name": "ALLH_SPAM_WORD", "target": "header", "header": "ALL",
     "pattern": r"(?i)\b(free|money|cash)\b", "score": 0.9},
    {"name": "HDR_ABSENT_IN_MOST", "target": "header", "header": "X-Nonexistent-Header",
     "pattern": r"x", "score": 5.0},
    {"name": "HDR_CC_MANY", "target": "header", "header": "Cc", "pattern": r",.*,",
     "score": 0.3},
    {"name": "SENDER_ANY_COM", "target": "sender", "pattern": r"(?i)\.com$", "score": 0.1},
    {"name": "SENDER_LINUX", "target": "sender", "pattern": r"(?i)linux", "score": -0.2},
    {"name": "URI_CGI", "target": "uri", "pattern": r"(?i)\.cgi\b", "score": 0.4},
    {"name": "BODY_UNICODE", "target": "body", "pattern": r"[\x{80}-\x{10FFFF}]",
     "score": 0.1},
]
COVERAGE_LISTS = {
    # matchUnauthenticated: these golden verdicts predate sender authentication, and the
    # engine is run here without DNS (filter_server/auth), as the corpus needs it.
    "allow": {"senders": ["rssfeeds@jmason.org"], "domains": ["spamassassin.taint.org"],
              "matchUnauthenticated": True,
              "uriHosts": ["www.linux.ie"], "score": -3},
    "block": {"senders": ["yyyy@spamassassin.taint.org"], "domains": ["hotmail.com"],
              "uriHosts": ["www.geocities.com", "sourceforge.net"], "score": 4},
}


# --- fingerprints ----------------------------------------------------------------------
def _digest(value: Any) -> str:
    # 10 hex digits: a chance of 1 in 10^12 that a change goes unseen, and a small file
    return hashlib.sha256(repr(value).encode("utf-8", "surrogatepass")).hexdigest()[:10]


def verdict_fingerprint(v: Verdict) -> str:
    return _digest((v.action, v.score, [(h.name, h.score, h.description) for h in v.hits],
                    v.spam_probability, v.policy_hash, sorted(v.fired)))


def parse_fingerprint(p: ParsedMessage) -> str:
    return _digest((list(p.headers), dict(p.header_map), p.body_text, p.html_present,
                    list(p.uris), list(p.uri_hosts), p.from_address, p.malformed,
                    p.part_count, list(p.attachments)))


def tokens_fingerprint(tokens: set[str]) -> str:
    return _digest(sorted(tokens))


def envelope_for(raw: bytes) -> Envelope:
    """A deterministic envelope: the Return-Path address as mail-from (found without the
    engine's parser, so it does not change with it)."""
    found = _RETURN_PATH.search(raw[:20000])
    mail_from = found.group(1).decode("latin-1") if found else ""
    return Envelope(mail_from=mail_from, recipients=("user@example.com",),
                    client_ip="192.0.2.1", helo="mail.example.net")


# --- inputs ------------------------------------------------------------------------------
def split_messages(split_root: Path) -> list[tuple[str, bytes]]:
    out = []
    for label in ("ham", "spam"):
        for path in sorted((split_root / "test" / label).iterdir()):
            if not path.name.startswith("."):
                out.append((f"{label}/{path.name}", path.read_bytes()))
    return out


def _positions(name: str, size: int, count: int) -> list[tuple[int, int]]:
    """`count` deterministic (offset, byte) pairs inside `size` bytes."""
    out = []
    for i in range(count):
        d = hashlib.sha256(f"{name}:{i}".encode()).digest()
        out.append((int.from_bytes(d[:4], "big") % max(size, 1), d[4]))
    return out


def damaged(messages: list[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
    for name, raw in messages[:DAMAGED_SAMPLE // 2] + messages[-DAMAGED_SAMPLE // 2:]:
        yield f"crlf:{name}", raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        yield f"cut:{name}", raw[: len(raw) * 3 // 5]
        head, sep, _ = raw.partition(b"\n\n")
        yield f"head:{name}", head + sep
        flipped = bytearray(raw)
        for offset, byte in _positions(name, len(raw), 12) if raw else ():
            flipped[offset] = byte
        yield f"bytes:{name}", bytes(flipped)


# --- policies ------------------------------------------------------------------------------
def _compile(policy: dict[str, Any], model_bytes: bytes | None) -> CompiledPolicy:
    errors = validate_policy(policy)
    if errors:
        raise ValueError("; ".join(str(e) for e in errors[:5]))
    policy = apply_defaults(policy)
    return CompiledPolicy(LoadedPolicy(policy, model_bytes, policy_hash(policy, model_bytes),
                                       "verdicts"))


def _example(model_bytes: bytes) -> dict[str, Any]:
    policy = load_policy_file(EXAMPLE_POLICY)
    policy["model"] = {"file": "model.json.gz", "weight": policy["model"]["weight"]}
    return policy


def policies(model_bytes: bytes, coverage_digests: list[str]
             ) -> dict[str, Callable[[], CompiledPolicy]]:
    def example() -> CompiledPolicy:
        return _compile(_example(model_bytes), model_bytes)

    def rules1000() -> CompiledPolicy:
        policy = _example(model_bytes)
        policy["rules"] = json.loads(gzip.decompress(RULES_1000.read_bytes()))
        policy["metaRules"] = []
        return _compile(policy, model_bytes)

    def coverage() -> CompiledPolicy:
        policy = _example(model_bytes)
        policy["rules"] = policy["rules"] + COVERAGE_RULES
        policy["lists"] = COVERAGE_LISTS
        policy["signatures"] = {"digests": coverage_digests, "score": 7}
        return _compile(policy, model_bytes)

    return {"example": example, "rules1000": rules1000, "coverage": coverage}


# --- the run -------------------------------------------------------------------------------
def model_bytes_and_split() -> tuple[bytes, Path]:
    """The model local mode trains on the train split (cached in .cache/models), and the
    split's root."""
    from mailwarden_local.model import ensure_model
    from mailwarden_local.corpus import DEFAULT_CORPUS

    data, _ = ensure_model(DEFAULT_CORPUS, DEFAULT_CORPUS.parent, lambda line: None)
    return data, DEFAULT_CORPUS.parent / "split"


def fingerprints(model_bytes: bytes, split_root: Path, coverage_digests: list[str],
                 progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """{"model_sha256", "names": message names, section: [fingerprint per input]}; the
    inputs of `coverage` are the messages, then their damaged copies."""
    messages = split_messages(split_root)
    out: dict[str, Any] = {"model_sha256": hashlib.sha256(model_bytes).hexdigest(),
                           "names": [name for name, _ in messages]}
    started = time.process_time()
    out["parse"] = []
    out["tokens"] = []
    for _, raw in messages:
        parsed = parse_message(raw)
        out["parse"].append(parse_fingerprint(parsed))
        out["tokens"].append(tokens_fingerprint(tokenize(parsed)))
    progress(f"parse + tokenize: {time.process_time() - started:.1f} s CPU")
    for key, build in policies(model_bytes, coverage_digests).items():
        started = time.process_time()
        compiled = build()
        inputs = messages + list(damaged(messages)) if key == "coverage" else messages
        out[key] = [verdict_fingerprint(compiled.classify(raw, envelope_for(raw)))
                    for _, raw in inputs]
        progress(f"{key}: {len(inputs)} verdicts, {time.process_time() - started:.1f} s CPU")
    return out


SECTIONS = ("parse", "tokens", "example", "rules1000", "coverage")


def differences(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """One line per section that differs, naming a few of the inputs that differ."""
    if expected["names"] != got["names"]:
        return ["the test split holds other messages than when the fingerprints were made"]
    names = list(got["names"])
    names += [name for name, _ in damaged([(n, b"") for n in got["names"]])]
    problems = []
    for section in SECTIONS:
        want, have = expected[section], got[section]
        changed = [names[i] for i in range(max(len(want), len(have)))
                   if i >= len(want) or i >= len(have) or want[i] != have[i]]
        if changed:
            problems.append(f"{section}: {len(changed)} of {len(want)} differ, e.g. "
                            + ", ".join(changed[:5]))
    return problems


def read_golden() -> dict[str, Any]:
    return json.loads(gzip.decompress(GOLDEN.read_bytes())) if GOLDEN.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    model_bytes, split_root = model_bytes_and_split()
    golden = read_golden()
    digests = golden.get("coverage_digests") or _coverage_digests(split_root)
    got = fingerprints(model_bytes, split_root, digests, progress=print)
    got["coverage_digests"] = digests
    if args.write:
        GOLDEN.write_bytes(gzip.compress(json.dumps(got, sort_keys=True).encode(), 9,
                                         mtime=0))
        print(f"wrote {GOLDEN}")
        return 0
    if golden.get("model_sha256") != got["model_sha256"]:
        print("the model differs from the one the fingerprints were made with "
              "(retrained?): verdicts are not comparable", file=sys.stderr)
        return 2
    problems = differences(golden, got)
    for line in problems:
        print(line, file=sys.stderr)
    print("identical" if not problems else "DIFFERENT")
    return 1 if problems else 0


def _coverage_digests(split_root: Path) -> list[str]:
    """Signatures of a few test-split messages (made once, then stored with the golden
    file so they do not follow later changes of the parser)."""
    from filter_server.engine.compiled import message_digest

    picked = split_messages(split_root)[::97]
    return sorted({message_digest(raw) for _, raw in picked})


if __name__ == "__main__":
    sys.exit(main())
