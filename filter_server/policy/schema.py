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


def _list_block(kind: str, default_score: float) -> dict[str, Any]:
    verb = "lowers" if default_score < 0 else "raises"
    return {
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
