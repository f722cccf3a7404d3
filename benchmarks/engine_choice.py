"""Why the engine is Hyperscan: scan cost of Hyperscan vs RE2's Set on the same rules and
the same corpus bodies, at 10, 100 and 1,000 rules; plus stdlib parser cost with the
`compat32` and `default` policies.

    .venv/bin/python benchmarks/engine_choice.py [--messages 2000]

Rules are phrase patterns mined deterministically from the train split (never the test
split), in four shapes a mail admin writes: word pairs with \\s+, bounded gaps, alternations
with digits, and prefix/suffix wildcards. Prints microseconds per message.
"""

from __future__ import annotations

import argparse
import collections
import email
import random
import re
import sys
import time
from email import policy as email_policy
from pathlib import Path

import hyperscan

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from filter_server.message import parse_message  # noqa: E402
from mailwarden_local.corpus import DEFAULT_CORPUS, split_corpus  # noqa: E402


def mine_patterns(bodies: list[bytes], count: int, seed: int = 1) -> list[bytes]:
    pairs: collections.Counter = collections.Counter()
    for body in bodies:
        words = re.findall(rb"[a-z]{4,12}", body.lower())
        pairs.update(zip(words, words[1:]))
    common = [p for p, _ in pairs.most_common(5000)]
    rng = random.Random(seed)
    patterns = []
    for i in range(count):
        a, b = rng.choice(common)
        shape = i % 4
        if shape == 0:
            patterns.append(rb"(?i)\b" + a + rb"\s+" + b + rb"\b")
        elif shape == 1:
            patterns.append(rb"(?i)" + a + rb".{0,20}" + b)
        elif shape == 2:
            patterns.append(rb"(?i)\b(?:" + a + rb"|" + b + rb")\d{2,}")
        else:
            patterns.append(rb"(?i)" + a[:3] + rb"[a-z]*" + b[-3:])
    return patterns


def time_hyperscan(patterns: list[bytes], texts: list[bytes]) -> tuple[float, int]:
    db = hyperscan.Database()
    flags = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_UTF8
    db.compile(expressions=patterns, ids=list(range(len(patterns))), elements=len(patterns),
               flags=[flags] * len(patterns))
    scratch = hyperscan.Scratch(db)
    hits = []
    started = time.perf_counter()
    for text in texts:
        db.scan(text, match_event_handler=lambda i, *_: hits.append(i), scratch=scratch)
    return (time.perf_counter() - started) / len(texts) * 1e6, len(hits)


def time_re2_set(patterns: list[bytes], texts: list[bytes]) -> tuple[float, int]:
    import re2
    pattern_set = re2.Set.SearchSet(re2.Options())
    for pattern in patterns:
        pattern_set.Add(pattern.decode())
    pattern_set.Compile()
    decoded = [t.decode("utf-8", "replace") for t in texts]
    hits = 0
    started = time.perf_counter()
    for text in decoded:
        hits += len(pattern_set.Match(text) or ())
    return (time.perf_counter() - started) / len(texts) * 1e6, hits


def time_parsers(raws: list[bytes]) -> dict[str, float]:
    out = {}
    for name, pol in (("compat32", email_policy.compat32), ("default", email_policy.default)):
        started = time.perf_counter()
        for raw in raws:
            message = email.message_from_bytes(raw, policy=pol)
            for part in message.walk():
                if part.get_content_maintype() == "text":
                    part.get_payload(decode=True)
                    if pol is email_policy.default:
                        try:
                            part.get_content()
                        except Exception:  # bad charsets: the parse cost was still paid
                            pass
        out[name] = (time.perf_counter() - started) / len(raws) * 1e6
    started = time.perf_counter()
    for raw in raws:
        parse_message(raw)
    out["mailwarden parse_message"] = (time.perf_counter() - started) / len(raws) * 1e6
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    split = split_corpus(DEFAULT_CORPUS, ROOT / ".cache" / "split")
    train = split.files("train", "ham") + split.files("train", "spam")
    random.Random(7).shuffle(train)
    raws = [p.read_bytes() for p in train[: args.messages]]
    texts = [parse_message(r).body_text.encode("utf-8", "replace") for r in raws]
    patterns = mine_patterns(texts, 1000)
    print(f"{len(texts)} train-split messages, mean body {sum(map(len, texts)) / len(texts):.0f} bytes")
    print(f"{'rules':>6} {'hyperscan us/msg':>17} {'re2 Set us/msg':>15} {'ratio':>6} hits(equal)")
    for n in (10, 100, 1000):
        hs_us, hs_hits = time_hyperscan(patterns[:n], texts)
        re2_us, re2_hits = time_re2_set(patterns[:n], texts)
        print(f"{n:>6} {hs_us:>17.1f} {re2_us:>15.1f} {re2_us / hs_us:>6.1f} "
              f"{hs_hits}/{re2_hits}")
    print("parser cost, us/msg (parse + decode text parts):")
    for name, us in time_parsers(raws[:500]).items():
        print(f"  {name:<26} {us:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
