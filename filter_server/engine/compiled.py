"""A policy compiled for serving, and the classification of one message against it.

Flow per message: parse once → scan each target text with its one Hyperscan database →
lists and signatures (set lookups) → meta rules (in dependency order) → statistical model →
sum of scores → action by thresholds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from filter_server.auth.evaluate import AuthOutcome, AuthSettings, evaluate
from filter_server.auth.gather import Evidence
from filter_server.bayes.model import BayesModel
from filter_server.bayes.tokenize import tokenize
from filter_server.cpu_budget import ScanBudget
from filter_server.engine.traits import TRAITS, traits
from filter_server.message import ParsedMessage, parse_message
from filter_server.patterns import PatternRule, TargetDatabase, target_key
from filter_server.policy.auth_rules import ALL_RULES
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
    # RFC 8601 Authentication-Results value (without the field name), "" when the policy
    # does not authenticate: what the milter/header paths add to the message.
    authentication_results: str = ""


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
        self.empty = not (self.senders or self.domains or self.hosts)
        # Allow lists match authenticated identities unless the policy opts out.
        self.authenticated_only = prefix == "ALLOWLIST" and \
            not spec.get("matchUnauthenticated", False)
        # Hits are immutable: made once, shared by every verdict.
        self._sender_hit = Hit(f"{prefix}_SENDER", self.score, "sender address is listed")
        self._domain_hit = Hit(f"{prefix}_DOMAIN", self.score, "sender domain is listed")
        self._host_hit = Hit(f"{prefix}_URI_HOST", self.score, "a link host is listed")

    def hits(self, senders: list[str], uri_hosts: list[str]) -> list[Hit]:
        out = []
        if self.senders and any(s in self.senders for s in senders):
            out.append(self._sender_hit)
        if self.domains and any(d in self.domains for s in senders if "@" in s
                                for d in _domain_and_parents(s.rpartition("@")[2])):
            out.append(self._domain_hit)
        if self.hosts and any(d in self.hosts for h in uri_hosts
                              for d in _domain_and_parents(h)):
            out.append(self._host_hit)
        return out

    def authenticated_hits(self, auth: AuthOutcome | None,
                           uri_hosts: list[str]) -> list[Hit]:
        """Senders and domains matched against what authentication proved (nothing when
        the message was not authenticated); link hosts as usual."""
        out = []
        if auth is not None:
            if self.senders and not self.senders.isdisjoint(auth.senders):
                out.append(self._sender_hit)
            if self.domains and any(d in self.domains for domain in auth.domains
                                    for d in _domain_and_parents(domain)):
                out.append(self._domain_hit)
        if self.hosts and any(d in self.hosts for h in uri_hosts
                              for d in _domain_and_parents(h)):
            out.append(self._host_hit)
        return out


def _auth_hits(scores: dict[str, float]) -> dict[str, Hit]:
    return {name: Hit(name, float(scores.get(name, default)), description)
            for name, (default, description) in ALL_RULES.items()}


_SIGNATURE_DESCRIPTION = "body matches a known spam signature"
_MALFORMED_HIT = Hit("MIME_MALFORMED", 0.0, "the MIME structure is broken")
# Built-in traits score nothing themselves either: a policy scores them with meta rules.
_TRAIT_HITS = {name: Hit(name, 0.0, description) for name, description in TRAITS.items()}
# Like MIME_MALFORMED it scores nothing itself; a policy scores it with a meta rule.
BUDGET_RULE = "SCAN_BUDGET_EXCEEDED"


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
            groups.setdefault(target_key(rule), []).append(PatternRule(index, rule["pattern"]))
        self.databases = {key: TargetDatabase(rules, line_mode=key != "body")
                          for key, rules in groups.items()}
        # The same databases by the text they scan, so a message only pays for the texts
        # it has: a header database is looked at only when the message has that header.
        self._body_db = self.databases.get("body")
        self._uri_db = self.databases.get("uri")
        self._sender_db = self.databases.get("sender")
        self._attachment_db = self.databases.get("attachment")
        self._all_headers_db = self.databases.get("header:ALL")
        self._header_dbs = {key[7:]: db for key, db in self.databases.items()
                            if key.startswith("header:") and key != "header:ALL"}
        # One immutable Hit per rule, made here instead of per message.
        self._rule_hits = [Hit(rule["name"], float(rule["score"]), rule.get("description", ""))
                           for rule in self.rules]
        self.auth = AuthSettings.from_policy(policy["authentication"])
        self._auth_hits = _auth_hits(policy["authentication"]["scores"])
        self.allow = _Lists(policy["lists"]["allow"], "ALLOWLIST")
        self.block = _Lists(policy["lists"]["block"], "BLOCKLIST")
        self.digests = frozenset(policy["signatures"]["digests"])
        self.signature_score = float(policy["signatures"]["score"])
        self._signature_hit = Hit("KNOWN_SPAM_SIGNATURE", self.signature_score,
                                  _SIGNATURE_DESCRIPTION)
        self.metas: list[tuple[dict[str, Any], MetaExpression]] = self._order_metas(
            policy["metaRules"])
        self._meta_hits = [(rule["name"], expression,
                            Hit(rule["name"], float(rule["score"]), rule.get("description", "")))
                           for rule, expression in self.metas]
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
    def scan(self, parsed: ParsedMessage, envelope: Envelope) -> list[int]:
        """Indexes of the pattern rules that match (unsorted, possibly repeated)."""
        fired: list[int] = []
        if self._body_db is not None and parsed.body_text:
            self._body_db.scan(_encode(parsed.body_text), fired)
        if self._uri_db is not None and parsed.uris:
            text = "\n".join(parsed.uris)
            if text:
                self._uri_db.scan(_encode(text), fired)
        if self._sender_db is not None:
            text = "\n".join(s for s in (envelope.mail_from, parsed.from_address) if s)
            if text:
                self._sender_db.scan(_encode(text), fired)
        if self._attachment_db is not None and parsed.attached_files:
            self._attachment_db.scan(_encode("\n".join(parsed.attached_files)), fired)
        if parsed.headers:
            if self._all_headers_db is not None:
                text = "\n".join(f"{n}: {v}" for n, v in parsed.headers)
                self._all_headers_db.scan(_encode(text), fired)
            header_map = parsed.header_map
            dbs = self._header_dbs
            # Walk the shorter of the two: the message's header names or the policy's.
            names = dbs.keys() & header_map.keys() if len(dbs) > 8 else \
                [name for name in dbs if name in header_map]
            for name in names:
                text = "\n".join(header_map[name])
                if text:
                    dbs[name].scan(_encode(text), fired)
        return fired

    def classify(self, raw: bytes, envelope: Envelope = Envelope(), *,
                 cpu_budget_seconds: float | None = None,
                 evidence: Evidence | None = None) -> Verdict:
        """The verdict on one message; `evidence` is what the authentication service
        gathered from DNS for it (filter_server/auth), when the policy authenticates. With
        `cpu_budget_seconds`, parsing stops once this thread has spent that much CPU time
        on it; what was read is classified as usual and a SCAN_BUDGET_EXCEEDED hit says how
        much that was (filter_server/cpu_budget.py)."""
        budget = ScanBudget(cpu_budget_seconds) if cpu_budget_seconds else None
        parsed = parse_message(raw, max_text_bytes=self.max_scan_bytes, budget=budget)
        return self.classify_parsed(parsed, envelope, raw=raw, evidence=evidence,
                                    cpu_budget_seconds=cpu_budget_seconds)

    def parse(self, raw: bytes) -> ParsedMessage:
        """`raw` parsed the way `classify` parses it (this policy's scan limit)."""
        return parse_message(raw, max_text_bytes=self.max_scan_bytes)

    def rule_hits(self, parsed: ParsedMessage, envelope: Envelope = Envelope()) -> list[Hit]:
        """Every rule, list, signature and meta rule that fires, without the model."""
        return self._rules(parsed, envelope)[0]

    def _rules(self, parsed: ParsedMessage, envelope: Envelope, raw: bytes = b"",
               evidence: Evidence | None = None, cpu_budget_seconds: float | None = None
               ) -> tuple[list[Hit], set[str], AuthOutcome | None]:
        rule_hits = self._rule_hits
        hits = [rule_hits[index] for index in sorted(set(self.scan(parsed, envelope)))]
        senders = [s.lower() for s in (envelope.mail_from, parsed.from_address) if s]
        auth: AuthOutcome | None = None
        if self.auth.enabled and evidence is not None:
            auth = evaluate(raw, evidence, self.auth, body_text=parsed.body_text,
                            uris=parsed.uris)
            hits += [self._auth_hit(name, detail) for name, detail in auth.rules]
        if not self.allow.empty:
            if self.allow.authenticated_only:
                hits += self.allow.authenticated_hits(auth, parsed.uri_hosts)
            else:
                hits += self.allow.hits(senders, parsed.uri_hosts)
        if not self.block.empty:
            hits += self.block.hits(senders, parsed.uri_hosts)
        if self.digests and body_digest(parsed.body_text) in self.digests:
            hits.append(self._signature_hit)
        if parsed.malformed:
            hits.append(_MALFORMED_HIT)
        hits += [_TRAIT_HITS[name] for name in sorted(traits(parsed))]
        if parsed.budget_note is not None:
            budget = f" of {cpu_budget_seconds:g} s" if cpu_budget_seconds else ""
            hits.append(Hit(BUDGET_RULE, 0.0, f"the CPU budget{budget} per message ran out: "
                            f"{parsed.budget_note}; the rest was not read"))
        fired = {h.name for h in hits}
        for name, expression, hit in self._meta_hits:
            if expression.evaluate(fired):
                fired.add(name)
                hits.append(hit)
        return hits, fired, auth

    def classify_parsed(self, parsed: ParsedMessage, envelope: Envelope = Envelope(), *,
                        raw: bytes = b"", evidence: Evidence | None = None,
                        cpu_budget_seconds: float | None = None) -> Verdict:
        """`classify` of a message parsed already (`parse`); authentication needs the raw
        bytes as well as the evidence (DKIM hashes the message as it came)."""
        hits, fired, auth = self._rules(parsed, envelope, raw, evidence, cpu_budget_seconds)
        probability = -1.0
        if self.model is not None:
            probability, certainty = self.model.explain(tokenize(parsed))
            contribution = round(self.model_weight * (2.0 * probability - 1.0), 3)
            hits.append(Hit("BAYES", contribution,
                            f"spam probability {probability:.3f} ({certainty})"))
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
        return Verdict(action, score, hits, probability, self.hash, frozenset(fired),
                       auth.header if auth is not None else "")

    def _auth_hit(self, name: str, detail: str) -> Hit:
        hit = self._auth_hits[name]
        return Hit(name, hit.score, f"{hit.description} ({detail})") if detail else hit
