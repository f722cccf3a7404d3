"""YAML (and JSON) policy text read with bounds on what it may cost.

`yaml.safe_load` builds aliases as shared objects, so a 421-byte document of nested
aliases loads in kilobytes, and every later step that walks the data (validation, copying,
hashing, error messages) pays for the expanded tree: 1.25-2.2 GB and a 312 MB error line
(issue 20). Nesting a few thousand levels deep raised RecursionError from PyYAML's
recursive composer. So the composed document is checked before anything is built from it:

- at most MAX_DEPTH levels of nesting (checked while composing, before the recursion
  gets deep);
- at most MAX_ALIASES alias references;
- aliases may add at most MAX_ALIAS_EXPANSION values to the document once expanded
  (counted on the composed node graph, linear in its size). A policy has no reason to
  multiply itself through aliases; one that shares a block now and then stays far below.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_DEPTH = 64
MAX_ALIASES = 1000
MAX_ALIAS_EXPANSION = 100_000


class YamlTooCostly(ValueError):
    """The document is nested too deeply or its aliases expand it too much."""


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlTooCostly(f"more than {MAX_ALIASES} YAML aliases")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlTooCostly(f"nested more than {MAX_DEPTH} levels deep (line "
                                    f"{mark.line + 1}, column {mark.column + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def expanded_size(root: Node) -> tuple[int, int]:
    """(distinct nodes, nodes once every alias is expanded) of a composed document, in one
    pass over the distinct nodes (each node's expanded size is computed once). Raises
    YamlTooCostly for an alias inside itself, which expands without end."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the path from the root: met again = a cycle
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise YamlTooCostly("a YAML alias refers to a node that contains it")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return len(sizes), sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def load_bounded(text: str) -> Any:
    """`yaml.safe_load(text)` within the bounds above; raises YamlTooCostly past them and
    yaml.YAMLError for bad syntax."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        distinct, expanded = expanded_size(node)
        if expanded - distinct > MAX_ALIAS_EXPANSION:
            raise YamlTooCostly(f"YAML aliases expand the document by {expanded - distinct:,} "
                                f"values (at most {MAX_ALIAS_EXPANSION:,})")
        return loader.construct_document(node)
    finally:
        loader.dispose()
