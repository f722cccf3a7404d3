"""Hyperscan-backed multi-pattern matching.

Hyperscan was chosen over RE2's `Set` by measurement (benchmarks/engine_choice.py): on
1,000 rules over SpamAssassin-corpus bodies it scans ~30x faster. Both are automata-based and
linear-time, so no policy can make matching super-linear; patterns Hyperscan cannot compile
(backreferences, lookaround) are rejected at validation time (`pattern_problems`).

Rules are grouped by the text they scan (`target_key`): one database per group. Compiling
is the slow part of loading a policy (about 1 s per 1,000 patterns), so validation compiles
each group once, as it will be served, and keeps the databases of the most recent groups
for `TargetDatabase` to reuse: validating and then compiling a policy compiles once, and a
reload that leaves a group unchanged does not recompile it.

Across processes: with $MAILWARDEN_PATTERN_CACHE_DIR set (the supervisor of a multi-worker
server sets it to a private temporary directory), compiled databases are also written there,
serialized, and read back by any process that needs the same database, so K workers do not
each spend seconds compiling what the supervisor's preflight just compiled. The directory
must be private to the server's user: a database file is trusted once read.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable

import hyperscan

from filter_server.compile_limits import (
    CompileTimeout,
    compile_in_child,
    complexity_problem,
)

# SINGLEMATCH: we only need to know *whether* a rule matched, and it bounds callbacks per
# scan to one per pattern. UTF8: inputs are always valid UTF-8 (we encode decoded text).
BASE_FLAGS = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_UTF8
# Line-oriented targets (headers, URIs, senders) hold one value per line: ^ and $ anchor
# to a value, not to the whole buffer.
LINE_FLAGS = BASE_FLAGS | hyperscan.HS_FLAG_MULTILINE

# Compiled databases kept for reuse, most recently used last. A policy has a handful of
# groups (body, uri, sender, ALL headers, one per header name it names); the bound only
# stops a process that validates many different policies from keeping them all.
MAX_KEPT_DATABASES = 64
_kept: OrderedDict[tuple[int, tuple[str, ...]], hyperscan.Database] = OrderedDict()
_kept_lock = threading.Lock()


def target_key(rule: dict[str, Any]) -> str:
    """Which text a pattern rule scans: "body", "uri", "sender", "header:ALL" (every
    header line) or "header:<lower-case name>"."""
    if rule["target"] != "header":
        return rule["target"]
    header = rule["header"]
    return "header:" + (header if header == "ALL" else header.lower())


def flags_for(key: str) -> int:
    return BASE_FLAGS if key == "body" else LINE_FLAGS


def _compile(patterns: tuple[str, ...], flags: int) -> hyperscan.Database:
    """One database of `patterns` (ids = positions); raises hyperscan.error."""
    db = hyperscan.Database()
    db.compile(expressions=[p.encode("utf-8") for p in patterns],
               ids=list(range(len(patterns))), elements=len(patterns),
               flags=[flags] * len(patterns))
    return db


def compiled_database(patterns: Iterable[str], flags: int) -> hyperscan.Database:
    """The database of `patterns`, compiled now or reused; raises hyperscan.error.

    Compilation runs outside the lock (it can take seconds); two threads asking for the
    same new database at once both compile it, which is only wasted work."""
    key = (flags, tuple(patterns))
    db = _known_database(key)
    if db is None:
        db = _compile(key[1], flags)
        _keep(key, db)
    return db


def _known_database(key: tuple[int, tuple[str, ...]]) -> hyperscan.Database | None:
    """The database of `key` if it was compiled before (here, or by another process into
    the pattern cache directory)."""
    with _kept_lock:
        db = _kept.get(key)
        if db is not None:
            _kept.move_to_end(key)
            return db
    cached = _cache_file(key)
    db = _read_cached(cached) if cached else None
    if db is not None:
        with _kept_lock:
            _kept[key] = db
            while len(_kept) > MAX_KEPT_DATABASES:
                _kept.popitem(last=False)
    return db


def _keep(key: tuple[int, tuple[str, ...]], db: hyperscan.Database) -> None:
    cached = _cache_file(key)
    if cached:
        _write_cached(cached, db)
    with _kept_lock:
        _kept[key] = db
        while len(_kept) > MAX_KEPT_DATABASES:
            _kept.popitem(last=False)


CACHE_DIR_ENV = "MAILWARDEN_PATTERN_CACHE_DIR"


def _cache_file(key: tuple[int, tuple[str, ...]]) -> str | None:
    """Where the database of `key` is kept across processes, or None (no cache dir)."""
    directory = os.environ.get(CACHE_DIR_ENV)
    if not directory:
        return None
    version = hyperscan.__version__  # type: ignore[attr-defined]  # missing in its stubs
    digest = hashlib.sha256(repr((version, key)).encode("utf-8", "surrogatepass"))
    return os.path.join(directory, digest.hexdigest() + ".hsdb")


def _read_cached(path: str) -> hyperscan.Database | None:
    try:
        with open(path, "rb") as f:
            return hyperscan.loadb(f.read(), hyperscan.HS_MODE_BLOCK)
    except (OSError, hyperscan.error):  # absent, unreadable, or from another engine build
        return None


def _write_cached(path: str, db: hyperscan.Database) -> None:
    """Best effort (a read-only or full disk only costs the next process a compile);
    atomic, so a reader never sees half a file."""
    try:
        data = hyperscan.dumpb(db)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except (OSError, hyperscan.error):
        pass


def _reason(exc: hyperscan.error | str) -> str:
    reason = str(exc)
    if "empty buffer" in reason:
        return "matches the empty string, so it would fire on every message"
    return f"not supported by the matching engine: {reason}"


def pattern_error(pattern: str, flags: int = LINE_FLAGS) -> str | None:
    """Why Hyperscan cannot take `pattern` alone, or None when it can."""
    if "\x00" in pattern:
        return "must not contain NUL characters"
    costly = complexity_problem(pattern)
    if costly:
        return costly
    try:
        _compile((pattern,), flags)
    except hyperscan.error as exc:
        return _reason(exc)
    return None


def pattern_problems(rules: list[dict[str, Any]], *, compile_seconds: int | None = None
                     ) -> list[tuple[int | None, str]]:
    """(rule index, reason) for every pattern rule whose pattern the engine cannot take;
    empty when all compile. Index None: a problem of a whole group, not of one pattern.

    One compile per group on the happy path, with the flags the group is served with (the
    databases are kept for `TargetDatabase`); only a group whose compile fails is compiled
    pattern by pattern, to name the culprits. A rule whose target or header is itself
    invalid (reported by the validator) is checked on its own. Patterns too complex to
    compile quickly are refused before compiling (compile_limits.py); with
    `compile_seconds`, compiling happens in a child process that is stopped after that
    long, and running out of time is a problem of the whole policy."""
    problems: list[tuple[int | None, str]] = []
    groups: dict[str, list[int]] = {}
    for index, rule in enumerate(rules):
        try:
            key = target_key(rule)
        except (KeyError, TypeError, AttributeError):
            problem = pattern_error(rule["pattern"])
            if problem:
                problems.append((index, problem))
            continue
        if "\x00" in rule["pattern"]:  # the engine takes C strings: check before it
            problems.append((index, "must not contain NUL characters"))
            continue
        costly = complexity_problem(rule["pattern"])
        if costly:
            problems.append((index, costly))
            continue
        groups.setdefault(key, []).append(index)
    if compile_seconds is None:
        problems += _compile_here(rules, groups)
    else:
        try:
            problems += _compile_in_child(rules, groups, compile_seconds)
        except CompileTimeout as exc:
            problems.append((None, f"the patterns take too long to compile ({exc}): "
                                   "simplify the slowest (many alternatives, long counted "
                                   "repetitions) or split the rules"))
    problems.sort(key=lambda p: -1 if p[0] is None else p[0])
    return problems


def _compile_here(rules: list[dict[str, Any]], groups: dict[str, list[int]]
                  ) -> list[tuple[int | None, str]]:
    problems: list[tuple[int | None, str]] = []
    for key, indexes in groups.items():
        flags = flags_for(key)
        try:
            compiled_database([rules[i]["pattern"] for i in indexes], flags)
            continue
        except hyperscan.error as exc:
            group_reason = str(exc)
        errors = [(i, pattern_error(rules[i]["pattern"], flags)) for i in indexes]
        found: list[tuple[int | None, str]] = [(i, reason) for i, reason in errors if reason]
        problems += found or [(None, f"the {len(indexes)} patterns scanning {key} do not "
                                     f"compile together: {group_reason}")]
    return problems


def _compile_in_child(rules: list[dict[str, Any]], groups: dict[str, list[int]],
                      cpu_seconds: int) -> list[tuple[int | None, str]]:
    """What `_compile_here` finds, compiled by a child process allowed `cpu_seconds` of
    CPU (raises CompileTimeout); the databases are kept as if compiled here."""
    problems: list[tuple[int | None, str]] = []
    todo = {}
    for key, indexes in groups.items():
        db_key = (flags_for(key), tuple(rules[i]["pattern"] for i in indexes))
        if _known_database(db_key) is None:
            todo[key] = db_key
    if not todo:
        return problems
    results = compile_in_child(list(todo.values()), cpu_seconds)
    failed: dict[str, str] = {}
    for (key, db_key), (ok, value) in zip(todo.items(), results):
        if ok:
            assert isinstance(value, bytes)
            _keep(db_key, hyperscan.loadb(value, hyperscan.HS_MODE_BLOCK))
        else:
            failed[key] = str(value)
    if not failed:
        return problems
    # Name the culprits: each pattern of a failed group on its own, in one more child.
    singles = [(key, i) for key in failed for i in groups[key]]
    results = compile_in_child([(flags_for(key), (rules[i]["pattern"],)) for key, i in singles],
                               cpu_seconds)
    named: set[str] = set()
    for (key, i), (ok, value) in zip(singles, results):
        if not ok:
            problems.append((i, _reason(str(value))))
            named.add(key)
    for key, reason in failed.items():
        if key not in named:
            problems.append((None, f"the {len(groups[key])} patterns scanning {key} do not "
                                   f"compile together: {reason}"))
    return problems


@dataclass(frozen=True)
class PatternRule:
    index: int      # position in the policy's rule list
    pattern: str


def _collect(pattern_id: int, start: int, end: int, flags: int,
             context: tuple[list[int], list[int]]) -> None:
    """Hyperscan's match callback: one module-level function (no closure per scan)."""
    context[0].append(context[1][pattern_id])


class TargetDatabase:
    """All patterns that scan one kind of text, compiled into one Hyperscan database."""

    def __init__(self, rules: Iterable[PatternRule], *, line_mode: bool) -> None:
        rules = list(rules)
        self.rule_indexes = [r.index for r in rules]
        self._db = compiled_database([r.pattern for r in rules],
                                     LINE_FLAGS if line_mode else BASE_FLAGS)
        self._prototype = hyperscan.Scratch(self._db)
        self._local = threading.local()  # scratch space is per thread

    def scan(self, data: bytes, fired: list[int]) -> None:
        """Append the rule index of every pattern that matches `data` to `fired`."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = self._prototype.clone()
        # The stubs type `context` as object; _collect takes the tuple it is given.
        self._db.scan(data, match_event_handler=_collect,  # type: ignore[arg-type]
                      context=(fired, self.rule_indexes), scratch=scratch)
