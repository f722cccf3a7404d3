"""Meta-rule expressions: boolean combinations of rule names.

Grammar (precedence low → high)::

    expr   := or
    or     := and ( "||" and )*
    and    := unary ( "&&" unary )*
    unary  := "!" unary | atom
    atom   := NAME | "(" expr ")"

Expressions are parsed once, at policy compile time, into nested tuples and evaluated
against the set of rule names that fired.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

_TOKEN = re.compile(r"\s*(?:(\|\|)|(&&)|(!)|(\()|(\))|([A-Za-z][A-Za-z0-9_]*))")

Node = Union[str, tuple]  # "NAME" | ("not", n) | ("and", n1, n2, ...) | ("or", n1, n2, ...)


class MetaSyntaxError(ValueError):
    """The expression is not well formed; `position` is the offending character index."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at character {position + 1}")
        self.position = position


@dataclass(frozen=True)
class MetaExpression:
    source: str
    tree: Node

    def names(self) -> set[str]:
        return _names(self.tree)

    def evaluate(self, fired: set[str] | frozenset[str]) -> bool:
        return _evaluate(self.tree, fired)


def _tokenize(source: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    end = len(source.rstrip())
    while pos < end:
        match = _TOKEN.match(source, pos)
        if not match:
            bad = pos + (len(source[pos:]) - len(source[pos:].lstrip()))
            raise MetaSyntaxError(f"unexpected character {source[bad]!r}", bad)
        group = match.lastindex or 0  # the pattern always matches one alternative's group
        kind = ("or", "and", "not", "(", ")", "name")[group - 1]
        tokens.append((kind, match.group(group), match.start(group)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokenize(source)
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def position(self) -> int:
        return self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.source)

    def take(self, kind: str) -> tuple[str, str, int]:
        if self.peek() != kind:
            found = self.tokens[self.i][1] if self.i < len(self.tokens) else "end of expression"
            want = {"name": "a rule name", ")": "')'"}.get(kind, repr(kind))
            raise MetaSyntaxError(f"expected {want}, found {found!r}", self.position())
        token = self.tokens[self.i]
        self.i += 1
        return token

    def parse(self) -> Node:
        if not self.tokens:
            raise MetaSyntaxError("empty expression", 0)
        tree = self.parse_or()
        if self.i != len(self.tokens):
            raise MetaSyntaxError(f"unexpected {self.tokens[self.i][1]!r}", self.position())
        return tree

    def parse_or(self) -> Node:
        items = [self.parse_and()]
        while self.peek() == "or":
            self.i += 1
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else ("or", *items)

    def parse_and(self) -> Node:
        items = [self.parse_unary()]
        while self.peek() == "and":
            self.i += 1
            items.append(self.parse_unary())
        return items[0] if len(items) == 1 else ("and", *items)

    def parse_unary(self) -> Node:
        if self.peek() == "not":
            self.i += 1
            return ("not", self.parse_unary())
        if self.peek() == "(":
            self.i += 1
            inner = self.parse_or()
            self.take(")")
            return inner
        return self.take("name")[1]


def parse_meta(source: str) -> MetaExpression:
    """Parse a meta-rule expression; raises MetaSyntaxError with the position on failure."""
    return MetaExpression(source, _Parser(source).parse())


def _names(node: Node) -> set[str]:
    if isinstance(node, str):
        return {node}
    out: set[str] = set()
    for child in node[1:]:
        out |= _names(child)
    return out


def _evaluate(node: Node, fired: set[str] | frozenset[str]) -> bool:
    if isinstance(node, str):
        return node in fired
    op = node[0]
    if op == "not":
        return not _evaluate(node[1], fired)
    if op == "and":
        return all(_evaluate(child, fired) for child in node[1:])
    return any(_evaluate(child, fired) for child in node[1:])
