"""The policy schema: one definition shared by the validator, the engine and the CRD.

It is written in the OpenAPI v3 subset that Kubernetes accepts as a *structural* schema, so
the SpamPolicy CRD embeds it verbatim under `spec.policy` (see `operator/crd.py`). The
validator adds `additionalProperties: false` everywhere so typos are errors in files; the
API server prunes unknown fields instead.
"""

from __future__ import annotations

import copy
from typing import Any

from filter_server.message import MAX_PARSE_BYTES
from filter_server.policy.auth_rules import ALL_RULES

RULE_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
# Hosts and domains are matched case-insensitively against the host and every parent domain.
HOST_PATTERN = (r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$")

MAX_RULES = 20000
MAX_META_RULES = 2000
MAX_LIST_ENTRIES = 100000
MAX_SIGNATURES = 100000
MAX_PATTERN_LENGTH = 4096
MAX_EXPRESSION_LENGTH = 4096

RULE_TARGETS = ("header", "body", "uri", "sender", "attachment")

DEFAULT_THRESHOLDS = {"tag": 5.0, "quarantine": 10.0, "reject": 20.0}
DEFAULT_ALLOW_SCORE = -100.0
DEFAULT_BLOCK_SCORE = 100.0
DEFAULT_SIGNATURE_SCORE = 20.0
DEFAULT_MODEL_WEIGHT = 6.0
DEFAULT_MAX_SCAN_BYTES = 262144
DEFAULT_AUTHSERV_ID = "mailwarden"
DEFAULT_DNS_TIMEOUT_SECONDS = 1.0
DEFAULT_DNS_BUDGET_SECONDS = 2.0
DEFAULT_DNS_CACHE_ENTRIES = 100000
# IPv4[:port], IPv6, or [IPv6]:port; the validator checks the addresses themselves.
NAMESERVER_PATTERN = r"^([0-9.]+(:[0-9]{1,5})?|[0-9A-Fa-f:.]+|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?)$"


def _list_block(kind: str, default_score: float) -> dict[str, Any]:
    verb = "lowers" if default_score < 0 else "raises"
    block: dict[str, Any] = {
        "type": "object",
        "description": f"{kind.capitalize()} list: a hit {verb} the score by `score` "
        f"(rule name {kind.upper()}LIST_SENDER, {kind.upper()}LIST_DOMAIN or "
        f"{kind.upper()}LIST_URI_HOST).",
        "properties": {
            "senders": {
                "type": "array",
                "description": "Exact addresses (case-insensitive) matched against the "
                "envelope MAIL FROM and the From header address.",
                "maxItems": MAX_LIST_ENTRIES,
                "items": {"type": "string", "maxLength": 320, "minLength": 3},
            },
            "domains": {
                "type": "array",
                "description": "Sender domains; a domain also matches its subdomains.",
                "maxItems": MAX_LIST_ENTRIES,
                "items": {"type": "string", "maxLength": 253, "pattern": HOST_PATTERN},
            },
            "uriHosts": {
                "type": "array",
                "description": "Hosts of links in the body; a host also matches its "
                "subdomains.",
                "maxItems": MAX_LIST_ENTRIES,
                "items": {"type": "string", "maxLength": 253, "pattern": HOST_PATTERN},
            },
            "score": {
                "type": "number",
                "description": f"Score added on a hit (default {default_score}).",
                "default": default_score,
            },
        },
    }
    if kind == "allow":
        block["description"] += (
            " Senders and domains match only what authentication proved: the envelope "
            "MAIL FROM when SPF passed for it, the From address when DMARC passed, and the "
            "domain (or a parent) of every DKIM signature that verifies — so a forged "
            "From never matches. This needs `authentication.enabled`, unless "
            "`matchUnauthenticated` is set.")
        block["properties"]["matchUnauthenticated"] = {
            "type": "boolean", "default": False,
            "description": "Match senders and domains against the unauthenticated envelope "
            "MAIL FROM and From header, as written by whoever sent the message. Anyone can "
            "forge those: only for mail that reaches the filter over a trusted path."}
        block["properties"]["senders"]["description"] = (
            "Exact addresses (case-insensitive), matched against the authenticated "
            "addresses (see above).")
    return block


def _scores_block() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Scores of the built-in authentication and bulk-gate rules "
        "(each may be overridden; meta rules can use the names too).",
        "default": {},
        "properties": {
            name: {"type": "number", "default": score,
                   "description": f"{description} (default {score})."}
            for name, (score, description) in ALL_RULES.items()},
    }


AUTHENTICATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Sender authentication (SPF, DKIM, DMARC, ARC) as built-in rules, an "
    "Authentication-Results header (RFC 8601) in every response, and the bulk-mail "
    "compliance gate. DNS lookups go through a caching resolver within each call's "
    "deadline; a DNS outage gives TEMPERROR results, never an error or a stall.",
    "properties": {
        "enabled": {"type": "boolean", "default": False,
                    "description": "Check SPF (when the request carries the client IP), "
                    "DKIM, DMARC and ARC for every message."},
        "authservId": {"type": "string", "maxLength": 253, "pattern": HOST_PATTERN,
                       "default": DEFAULT_AUTHSERV_ID,
                       "description": "The authserv-id that starts the "
                       "Authentication-Results header (your MX host name)."},
        "dns": {
            "type": "object",
            "description": "The resolver the checks use.",
            "default": {},
            "properties": {
                "servers": {
                    "type": "array", "maxItems": 8,
                    "description": "Recursive resolvers as IP or IP:port ([v6]:port); "
                    "tried in order. Default: the nameservers of the pod's "
                    "/etc/resolv.conf (cluster DNS).",
                    "items": {"type": "string", "maxLength": 64,
                              "pattern": NAMESERVER_PATTERN}},
                "timeoutSeconds": {"type": "number", "minimum": 0.01, "maximum": 30,
                                   "default": DEFAULT_DNS_TIMEOUT_SECONDS,
                                   "description": "Longest one lookup may take (all "
                                   "servers together)."},
                "budgetSeconds": {"type": "number", "minimum": 0.01, "maximum": 60,
                                  "default": DEFAULT_DNS_BUDGET_SECONDS,
                                  "description": "Longest all lookups of one message may "
                                  "take; never more than half of what is left of the "
                                  "call's deadline. What is not answered by then is a "
                                  "TEMPERROR."},
                "cacheEntries": {"type": "integer", "minimum": 0, "maximum": 10000000,
                                 "default": DEFAULT_DNS_CACHE_ENTRIES,
                                 "description": "Answers kept per worker (TTL-respecting, "
                                 "negative answers included)."},
            },
        },
        "arc": {
            "type": "object",
            "description": "ARC (RFC 8617): how far forwarders' seals are trusted.",
            "default": {},
            "properties": {
                "trustedSealers": {
                    "type": "array", "maxItems": 1000,
                    "description": "Domains whose valid ARC seal overrides a DMARC "
                    "failure (mailing lists and forwarders you trust): "
                    "DMARC_ARC_OVERRIDE fires instead of DMARC_REJECT/QUARANTINE.",
                    "items": {"type": "string", "maxLength": 253,
                              "pattern": HOST_PATTERN}},
            },
        },
        "bulkGate": {
            "type": "object",
            "description": "Outbound compliance gate for messages sent with mail_class "
            "BULK: one-click List-Unsubscribe (RFC 8058) with an https URI whose token "
            "verifies with the unsubscribe store's keys (`mailwarden serve "
            "--signing-key-dir`), List-Unsubscribe-Post, an aligned DKIM signature "
            "covering both, List-Id and a visible unsubscribe link. Each failure is a "
            "BULK_* rule hit.",
            "default": {},
            "properties": {
                "enabled": {"type": "boolean", "default": False,
                            "description": "Check requests whose mail_class is BULK."},
            },
        },
        "scores": _scores_block(),
    },
}


POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A Mailwarden spam-filtering policy: rules, lists, signatures, the "
    "statistical model and the score thresholds that choose the action.",
    "properties": {
        "thresholds": {
            "type": "object",
            "description": "Score thresholds. A message scoring at least `reject` is "
            "REJECTed, else at least `quarantine` is QUARANTINEd, else at least `tag` "
            "is TAGged, otherwise ACCEPTed.",
            "default": dict(DEFAULT_THRESHOLDS),
            "properties": {
                "tag": {"type": "number", "default": DEFAULT_THRESHOLDS["tag"],
                        "description": "Score from which a message is tagged as spam."},
                "quarantine": {"type": "number", "default": DEFAULT_THRESHOLDS["quarantine"],
                               "description": "Score from which a message is quarantined."},
                "reject": {"type": "number", "default": DEFAULT_THRESHOLDS["reject"],
                           "description": "Score from which a message is rejected."},
            },
            "x-kubernetes-validations": [
                {"rule": "self.tag <= self.quarantine && self.quarantine <= self.reject",
                 "message": "thresholds must satisfy tag <= quarantine <= reject"},
            ],
        },
        "rules": {
            "type": "array",
            "description": "Pattern rules. All patterns of a policy are compiled into one "
            "linear-time multi-pattern database (Hyperscan): no backreferences or "
            "lookaround; \\w, \\b and \\d are ASCII.",
            "maxItems": MAX_RULES,
            "items": {
                "type": "object",
                "required": ["name", "target", "pattern", "score"],
                "properties": {
                    "name": {"type": "string", "pattern": RULE_NAME_PATTERN, "maxLength": 64,
                             "description": "Unique rule name, reported in rule hits."},
                    "description": {"type": "string", "maxLength": 1024,
                                    "description": "What the rule catches (shown in hits)."},
                    "target": {
                        "type": "string", "enum": list(RULE_TARGETS),
                        "description": "What the pattern scans: `header` (the values of "
                        "`header`, decoded, one per line), `body` (decoded text of all "
                        "text parts, HTML stripped, whitespace collapsed), `uri` (every "
                        "link in the body, one per line), `sender` (envelope MAIL FROM "
                        "and From header address, one per line), `attachment` (every "
                        "attached file as `content/type file-name`, the name lower-cased, "
                        "one per line).",
                    },
                    "header": {"type": "string", "maxLength": 128,
                               "pattern": r"^([!-9;-~]+|ALL)$",
                               "description": "Header name for target `header` "
                               "(case-insensitive); `ALL` scans every header as "
                               "`Name: value` lines."},
                    "pattern": {"type": "string", "minLength": 1,
                                "maxLength": MAX_PATTERN_LENGTH,
                                "description": "Regular expression (Hyperscan/PCRE "
                                "syntax subset). Inline flags such as (?i) are allowed."},
                    "score": {"type": "number",
                              "description": "Score added when the pattern matches "
                              "(negative to lower it)."},
                },
                "x-kubernetes-validations": [
                    {"rule": "self.target != 'header' || has(self.header)",
                     "message": "rules with target 'header' must name the header"},
                    {"rule": "self.target == 'header' || !has(self.header)",
                     "message": "only rules with target 'header' take a header name"},
                ],
            },
        },
        "metaRules": {
            "type": "array",
            "description": "Rules that combine other rules' results with && (and), || (or), "
            "! (not) and parentheses, e.g. `SUBJ_MONEY && (BODY_WIRE || !HAS_UNSUB)`.",
            "maxItems": MAX_META_RULES,
            "items": {
                "type": "object",
                "required": ["name", "expression", "score"],
                "properties": {
                    "name": {"type": "string", "pattern": RULE_NAME_PATTERN, "maxLength": 64,
                             "description": "Unique rule name."},
                    "description": {"type": "string", "maxLength": 1024,
                                    "description": "What the combination means."},
                    "expression": {"type": "string", "minLength": 1,
                                   "maxLength": MAX_EXPRESSION_LENGTH,
                                   "description": "Boolean expression over rule names "
                                   "(pattern, list, signature or other meta rules)."},
                    "score": {"type": "number", "description": "Score added when true."},
                },
            },
        },
        "lists": {
            "type": "object",
            "description": "Allow and block lists.",
            "properties": {
                "allow": _list_block("allow", DEFAULT_ALLOW_SCORE),
                "block": _list_block("block", DEFAULT_BLOCK_SCORE),
            },
        },
        "signatures": {
            "type": "object",
            "description": "Known spam, by digest of the normalized body (see "
            "`mailwarden policy digest`). A hit fires KNOWN_SPAM_SIGNATURE.",
            "properties": {
                "digests": {
                    "type": "array", "maxItems": MAX_SIGNATURES,
                    "description": "`sha256:` + hex digest of the normalized body text.",
                    "items": {"type": "string", "pattern": DIGEST_PATTERN, "maxLength": 71},
                },
                "score": {"type": "number", "default": DEFAULT_SIGNATURE_SCORE,
                          "description": f"Score added on a hit (default "
                          f"{DEFAULT_SIGNATURE_SCORE})."},
            },
        },
        "model": {
            "type": "object",
            "description": "The statistical model (trained with `mailwarden train`). Its "
            "spam probability p adds weight * (2p - 1) to the score.",
            "properties": {
                "file": {"type": "string", "maxLength": 253,
                         "pattern": r"^[A-Za-z0-9._-]+$",
                         "description": "Model file name inside the policy directory."},
                "configMapRef": {
                    "type": "object",
                    "description": "ConfigMap (same namespace) holding the model; the "
                    "operator copies it into the policy ConfigMap.",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "maxLength": 253,
                                 "description": "ConfigMap name."},
                        "key": {"type": "string", "maxLength": 253, "default": "model.json.gz",
                                "description": "Key in the ConfigMap's binaryData or data."},
                    },
                },
                "weight": {"type": "number", "minimum": 0, "maximum": 1000,
                           "default": DEFAULT_MODEL_WEIGHT,
                           "description": "Score at p = 1 (and minus it at p = 0)."},
            },
            "x-kubernetes-validations": [
                {"rule": "!(has(self.file) && has(self.configMapRef))",
                 "message": "model takes either file or configMapRef, not both"},
            ],
        },
        "authentication": AUTHENTICATION_SCHEMA,
        "mta": {
            "type": "object",
            "description": "What the mail-server protocols (milter, spamd, Rspamd; "
            "docs/protocols.md) tell an MTA. Every field is optional.",
            "properties": {
                "rejectReason": {"type": "string", "maxLength": 200,
                                 "default": "Message rejected as spam",
                                 "description": "Text of the 550 5.7.1 reply to a REJECTed "
                                 "message (milter), Rspamd's smtp_message."},
                "quarantineReason": {"type": "string", "maxLength": 200,
                                     "default": "Message held for review as suspected spam",
                                     "description": "Reason given with a milter "
                                     "quarantine (Postfix: the hold queue)."},
                "headerPrefix": {"type": "string", "maxLength": 40, "default": "X-Spam",
                                 "pattern": r"^[A-Za-z][A-Za-z0-9-]*$",
                                 "description": "Added headers are <prefix>-Flag, -Score, "
                                 "-Action and -Status; incoming copies are removed."},
                "authservId": {"type": "string", "maxLength": 120, "default": "mailwarden",
                               "pattern": r"^[A-Za-z0-9][A-Za-z0-9.-]*$",
                               "description": "authserv-id of the Authentication-Results "
                               "header listing the hits; incoming ones with this id are "
                               "removed."},
                "removeSuppressedRecipients": {
                    "type": "boolean", "default": False,
                    "description": "milter: remove suppressed recipients from the envelope "
                    "(the MTA then enforces unsubscribes); each removal is logged and "
                    "counted."},
                "listScopeHeader": {"type": "string", "maxLength": 80,
                                    "default": "X-Mailwarden-List-Scope",
                                    "pattern": r"^[!-9;-~]+$",
                                    "description": "Header naming the list a message is sent "
                                    "for (Classify's list_scope)."},
                "mailClassHeader": {"type": "string", "maxLength": 80,
                                    "default": "X-Mailwarden-Mail-Class",
                                    "pattern": r"^[!-9;-~]+$",
                                    "description": "Header saying `transactional` or `bulk` "
                                    "(Classify's mail_class; bulk when absent)."},
            },
        },
        "limits": {
            "type": "object",
            "description": "Bounds on the work done per message.",
            "properties": {
                "maxScanBytes": {"type": "integer", "minimum": 1024,
                                 "maximum": MAX_PARSE_BYTES,
                                 "default": DEFAULT_MAX_SCAN_BYTES,
                                 "description": "Decoded body text beyond this many bytes "
                                 "is not scanned (at most 4 MiB: only the first 4 MiB of a "
                                 "message are parsed)."},
            },
        },
    },
}


def strict_json_schema() -> dict[str, Any]:
    """The policy schema as a JSON Schema that also rejects unknown fields."""
    schema = copy.deepcopy(POLICY_SCHEMA)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
