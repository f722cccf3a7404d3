"""What sender authentication changes on the SpamAssassin corpus' test split.

    .venv/bin/python -m benchmarks.auth_accuracy

The corpus is from 2002-2003: it has no DKIM-Signature (DKIM came in 2007, DMARC in 2012),
no Authentication-Results or Received-SPF headers, and the DNS records its senders had are
gone. So each message is classified twice with the example policy and the model local mode
trains — without authentication, and with it against a Knot server that answers NXDOMAIN
for every name (as the Internet would for most of these domains' 2002 records, and as an
empty cache does for everything) — with the envelope a receiving MTA would have had:
MAIL FROM from Return-Path, the client IP and HELO from the top Received header (the hop
into the recipient's site). The report counts the authentication rules that fired and the
change in false positives and spam recall.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

from filter_server.auth.gather import Request
from filter_server.auth.service import Authenticator
from filter_server.engine.compiled import CompiledPolicy, Envelope
from filter_server.policy.loader import LoadedPolicy, policy_hash
from filter_server.policy.validate import apply_defaults, load_policy_file
from mailwarden_local.corpus import DEFAULT_CORPUS
from mailwarden_local.model import ensure_model
from testkit.dns import KnotServer, Zone


class _Metrics:
    def dns_lookup(self, outcome: str, seconds: float) -> None:
        pass

    def gathered(self, seconds: float, temperrors: list[str]) -> None:
        pass

REPO = Path(__file__).resolve().parent.parent
_RECEIVED = re.compile(rb"^Received:[ \t]*from[ \t]+(\S+)[^\n]*(?:\n[ \t][^\n]*)*",
                       re.M | re.I)
_IP = re.compile(rb"\[(\d{1,3}(?:\.\d{1,3}){3})\]")
_RETURN_PATH = re.compile(rb"^Return-Path:\s*<?([^>\s]*)>?", re.M | re.I)


def envelope_of(raw: bytes) -> tuple[str, str, str]:
    """(mail_from, client_ip, helo) a receiving MTA would have known, from the headers."""
    head = raw.split(b"\n\n", 1)[0][:65536]
    found = _RETURN_PATH.search(head)
    mail_from = found.group(1).decode("latin-1") if found else ""
    received = _RECEIVED.search(head)
    ip = helo = ""
    if received:
        helo = received.group(1).decode("latin-1").strip("()")
        address = _IP.search(received.group(0))
        ip = address.group(1).decode() if address else ""
    return mail_from, ip, helo


def main() -> int:
    model, _ = ensure_model(DEFAULT_CORPUS, REPO / ".cache", print)
    split = REPO / ".cache" / "split"
    policy = load_policy_file(REPO / "examples" / "spampolicy.yaml")
    policy["model"] = {"file": "model.json.gz", "weight": policy["model"]["weight"]}
    policy = apply_defaults(policy)
    compiled = CompiledPolicy(LoadedPolicy(policy, model, policy_hash(policy, model), "acc"))
    counts: Counter[str] = Counter()
    fired: Counter[str] = Counter()
    with_ip = 0
    started = time.monotonic()
    with KnotServer(Path(tempfile.mkdtemp()) / "knot", Zone()) as knot:
        compiled.auth = dataclasses.replace(compiled.auth, servers=(knot.address,))
        settings = compiled.auth
        authenticator = Authenticator(_Metrics())
        try:
            for label in ("ham", "spam"):
                for path in sorted((split / "test" / label).iterdir()):
                    raw = path.read_bytes()
                    mail_from, ip, helo = envelope_of(raw)
                    with_ip += bool(ip)
                    envelope = Envelope(mail_from, ("user@example.com",), ip, helo)
                    before = compiled.classify(raw, envelope)
                    evidence = authenticator.gather(
                        Request(raw, mail_from, helo, ip, False), settings, None)
                    after = compiled.classify(raw, envelope, evidence=evidence)
                    fired.update(h.name for h in after.hits if h.name.split("_")[0] in
                                 ("SPF", "DKIM", "DMARC", "ARC"))
                    spam_before = before.action != "ACCEPT"
                    spam_after = after.action != "ACCEPT"
                    counts[f"{label}"] += 1
                    counts[f"{label}_flagged_before"] += spam_before
                    counts[f"{label}_flagged_after"] += spam_after
                    counts[f"{label}_changed"] += spam_before != spam_after
        finally:
            authenticator.close()
    total = counts["ham"] + counts["spam"]
    print(f"{total} test messages ({counts['ham']} ham, {counts['spam']} spam), "
          f"{with_ip} with a client IP in their top Received header, "
          f"{time.monotonic() - started:.0f} s")
    print(f"ham FPR: {counts['ham_flagged_before'] / counts['ham']:.4f} without, "
          f"{counts['ham_flagged_after'] / counts['ham']:.4f} with authentication "
          f"({counts['ham_changed']} ham verdicts changed)")
    print(f"spam recall: {counts['spam_flagged_before'] / counts['spam']:.4f} without, "
          f"{counts['spam_flagged_after'] / counts['spam']:.4f} with authentication "
          f"({counts['spam_changed']} spam verdicts changed)")
    print("authentication rules fired: " + ", ".join(f"{n} {c}" for n, c in
                                                      fired.most_common()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
