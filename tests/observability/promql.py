"""Metric names a PromQL expression reads: a small tokenizer (no PromQL parser exists for
Python here; promtool checks the syntax separately). It drops strings, label matchers,
ranges and grouping clauses, then keeps identifiers that are not calls or keywords."""

from __future__ import annotations

import re

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "inf", "nan", "atan2"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    names: set[str] = set()  # {__name__=~"a|b"} names a and b
    for match in re.finditer(r'\{[^}]*__name__\s*=~?\s*"((?:[^"\\]|\\.)*)"', expr):
        names.update(n for n in match.group(1).split("|") if n)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = GROUPING.sub(" ", text)
    for match in IDENT.finditer(text):
        word = match.group(0)
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue
        if re.fullmatch(r"\d.*", word):
            continue
        names.add(word)
    return names


GRAFANA_VARIABLES = re.compile(r"\$(__rate_interval|__interval|__range|\w+)|\$\{(\w+)\}")


def without_grafana_variables(expr: str) -> str:
    """Grafana's variables replaced by values PromQL accepts (durations, regexes)."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return "5m" if name.startswith("__") else ".*"
    return GRAFANA_VARIABLES.sub(value, expr)
