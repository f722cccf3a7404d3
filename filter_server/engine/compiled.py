"""A policy compiled for serving, and the classification of one message against it.

Flow per message: parse once → scan each target text with its one Hyperscan database →
lists and signatures (set lookups) → meta rules (in dependency order) → statistical model →
sum of scores → action by thresholds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from filter_server.bayes.model import BayesModel
from filter_server.bayes.tokenize import tokenize
from filter_server.engine.message import ParsedMessage, parse_message
from filter_server.engine.patterns import PatternRule, TargetDatabase
from filter_server.policy.loader import LoadedPolicy
from filter_server.policy.meta import MetaExpression, parse_meta

ACTIONS = ("ACCEPT", "TAG", "QUARANTINE", "REJECT")


@dataclass(frozen=True)
class Envelope:
    mail_from: str = ""
    recipients: tuple[str, ...] = ()
    client_ip: str = ""
    helo: str = ""


@dataclass(frozen=True)
class Hit:
    name: str
    score: float
    description: str = ""


@dataclass
class Verdict:
    action: str
    score: float
    hits: list[Hit]
    spam_probability: float   # -1 when the policy has no model
    policy_hash: str
    fired: frozenset[str] = field(default_factory=frozenset)


def body_digest(body_text: str) -> str:
    """Signature of a message body: sha256 of its decoded text, lower-cased, whitespace
    collapsed (the parser already collapsed it), so re-wrapping or case changes match."""
    return "sha256:" + hashlib.sha256(body_text.lower().encode("utf-8", "replace")).hexdigest()


def message_digest(raw: bytes) -> str:
    """The signature `mailwarden policy digest` prints for a raw message."""
    return body_digest(parse_message(raw).body_text)


def _domain_and_parents(host: str) -> list[str]:
    labels = host.lower().rstrip(".").split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)] or [host.lower()]


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "replace")


class _Lists:
    def __init__(self, spec: dict[str, Any], prefix: str) -> None:
        self.prefix = prefix
        self.score = float(spec["score"])
        self.senders = {s.lower() for s in spec["senders"]}
        self.domains = {d.lower().rstrip(".") for d in spec["domains"]}
        self.hosts = {h.lower().rstrip(".") for h in spec["uriHosts"]}

    def hits(self, senders: list[str], uri_hosts: list[str]) -> list[Hit]:
        out = []
        if self.senders and any(s in self.senders for s in senders):
            out.append(Hit(f"{self.prefix}_SENDER", self.score, "sender address is listed"))
        if self.domains and any(d in self.domains for s in senders if "@" in s
                                for d in _domain_and_parents(s.rpartition("@")[2])):
            out.append(Hit(f"{self.prefix}_DOMAIN", self.score, "sender domain is listed"))
        if self.hosts and any(d in self.hosts for h in uri_hosts
                              for d in _domain_and_parents(h)):
            out.append(Hit(f"{self.prefix}_URI_HOST", self.score, "a link host is listed"))
        return out


class CompiledPolicy:
    def __init__(self, loaded: LoadedPolicy) -> None:
        policy = loaded.policy
        self.hash = loaded.hash
        self.policy = policy
        t = policy["thresholds"]
        self.thresholds = (float(t["tag"]), float(t["quarantine"]), float(t["reject"]))
        self.max_scan_bytes = int(policy["limits"]["maxScanBytes"])
        self.rules = policy["rules"]
        groups: dict[str, list[PatternRule]] = {}
        for index, rule in enumerate(self.rules):
            key = rule["target"]
            if key == "header":
                key = "header:" + (rule["header"] if rule["header"] == "ALL"
                                   else rule["header"].lower())
            groups.setdefault(key, []).append(PatternRule(index, rule["pattern"]))
        self.databases = {key: TargetDatabase(rules, line_mode=key != "body")
                          for key, rules in groups.items()}
        self.allow = _Lists(policy["lists"]["allow"], "ALLOWLIST")
        self.block = _Lists(policy["lists"]["block"], "BLOCKLIST")
        self.digests = frozenset(policy["signatures"]["digests"])
        self.signature_score = float(policy["signatures"]["score"])
        self.metas: list[tuple[dict[str, Any], MetaExpression]] = self._order_metas(
            policy["metaRules"])
        self.model: BayesModel | None = None
        self.model_weight = 0.0
        if loaded.model_bytes is not None:
            self.model = BayesModel.from_bytes(loaded.model_bytes)
            self.model_weight = float(policy["model"]["weight"])

    @staticmethod
    def _order_metas(rules: list[dict[str, Any]]) -> list[tuple[dict[str, Any], MetaExpression]]:
        parsed = {r["name"]: (r, parse_meta(r["expression"])) for r in rules}
        ordered: list[tuple[dict[str, Any], MetaExpression]] = []
        done: set[str] = set()

        def place(name: str) -> None:
            if name in done:
                return
            done.add(name)
            rule, expression = parsed[name]
            for dep in sorted(expression.names()):
                if dep in parsed:
                    place(dep)
            ordered.append((rule, expression))

        for name in parsed:
            place(name)
        return ordered

    # ------------------------------------------------------------------------------------
    def _scan(self, parsed: ParsedMessage, envelope: Envelope) -> list[int]:
        fired: list[int] = []
        for key, db in self.databases.items():
            if key == "body":
                text = parsed.body_text
            elif key == "uri":
                text = "\n".join(parsed.uris)
            elif key == "sender":
                text = "\n".join(s for s in (envelope.mail_from, parsed.from_address) if s)
            elif key == "header:ALL":
                text = "\n".join(f"{n}: {v}" for n, v in parsed.headers)
            else:
                text = "\n".join(parsed.header_map.get(key[7:], ()))
            if text:
                db.scan(_encode(text), fired)
        return fired

    def classify(self, raw: bytes, envelope: Envelope = Envelope()) -> Verdict:
        parsed = parse_message(raw, max_text_bytes=self.max_scan_bytes)
        hits: list[Hit] = []
        for index in sorted(set(self._scan(parsed, envelope))):
            rule = self.rules[index]
            hits.append(Hit(rule["name"], float(rule["score"]), rule.get("description", "")))
        senders = [s.lower() for s in (envelope.mail_from, parsed.from_address) if s]
        hits += self.allow.hits(senders, parsed.uri_hosts)
        hits += self.block.hits(senders, parsed.uri_hosts)
        if self.digests and body_digest(parsed.body_text) in self.digests:
            hits.append(Hit("KNOWN_SPAM_SIGNATURE", self.signature_score,
                            "body matches a known spam signature"))
        if parsed.malformed:
            hits.append(Hit("MIME_MALFORMED", 0.0, "the MIME structure is broken"))
        fired = {h.name for h in hits}
        for rule, expression in self.metas:
            if expression.evaluate(fired):
                fired.add(rule["name"])
                hits.append(Hit(rule["name"], float(rule["score"]),
                                rule.get("description", "")))
        probability = -1.0
        if self.model is not None:
            probability = self.model.spam_probability(tokenize(parsed))
            contribution = round(self.model_weight * (2.0 * probability - 1.0), 3)
            hits.append(Hit("BAYES", contribution, f"spam probability {probability:.3f}"))
        score = round(sum(h.score for h in hits), 3)
        tag, quarantine, reject = self.thresholds
        if score >= reject:
            action = "REJECT"
        elif score >= quarantine:
            action = "QUARANTINE"
        elif score >= tag:
            action = "TAG"
        else:
            action = "ACCEPT"
        return Verdict(action, score, hits, probability, self.hash, frozenset(fired))
