"""The one policy validator: used by `mailwarden policy validate`, the filter server before
it swaps a policy in, the operator before it renders one, and the admission webhook.

Every problem is reported with its path (`rules[3].pattern`) and reason; validation never
stops at the first error and never raises on bad input.
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from filter_server.compile_limits import compile_seconds_for
from filter_server.patterns import pattern_problems
from filter_server.policy import meta, schema
from filter_server.policy.auth_rules import ALL_RULES, AUTH_RULES, BULK_RULES
from filter_server.policy.bounded_yaml import YamlTooCostly, load_bounded
from filter_server.policy.trait_rules import TRAITS

SYNTHETIC_RULES = frozenset({
    "ALLOWLIST_SENDER", "ALLOWLIST_DOMAIN", "ALLOWLIST_URI_HOST",
    "BLOCKLIST_SENDER", "BLOCKLIST_DOMAIN", "BLOCKLIST_URI_HOST",
    "KNOWN_SPAM_SIGNATURE", "MIME_MALFORMED", "SCAN_BUDGET_EXCEEDED", "BAYES",
    *ALL_RULES, *TRAITS,
})


# Error messages quote what they are about (jsonschema puts the whole offending value in
# its messages: a 312 MB log line for an alias bomb), so each part of an error is cut to
# these lengths, and at most MAX_ERRORS errors are reported (plus a line saying how many
# more there were). Errors go to logs, terminals and the admission webhook's answer.
MAX_REASON_CHARS = 300
MAX_PATH_CHARS = 200
MAX_ERRORS = 50


def shorten(text: str, limit: int) -> str:
    """`text`, or its start and how long it was when it is longer than `limit`."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


@dataclass(frozen=True)
class PolicyError:
    path: str
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", shorten(self.path, MAX_PATH_CHARS))
        object.__setattr__(self, "reason", shorten(self.reason, MAX_REASON_CHARS))

    def __str__(self) -> str:
        return f"{self.path or '<policy>'}: {self.reason}"


def _at_most(errors: list[PolicyError], *, stopped_early: bool = False) -> list[PolicyError]:
    """The first MAX_ERRORS of `errors`, and a last one saying that more were left out
    (`stopped_early`: the search stopped before counting them all)."""
    if len(errors) <= MAX_ERRORS and not stopped_early:
        return errors
    left_out = "more errors" if stopped_early else f"{len(errors) - MAX_ERRORS:,} more errors"
    return errors[:MAX_ERRORS] + [PolicyError("", f"{left_out} not shown")]


class PolicyInvalid(ValueError):
    """Raised by `load_policy*` when a policy does not validate; carries every error."""

    def __init__(self, errors: list[PolicyError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


_STRICT = jsonschema.Draft202012Validator(schema.strict_json_schema())


def _format_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_errors(policy: Any) -> list[PolicyError]:
    errors = []
    # Stop after what is reported: a policy can hold hundreds of thousands of errors, and
    # each message holds a copy of the value it is about.
    for err in itertools.islice(_STRICT.iter_errors(policy), MAX_ERRORS + 1):
        path = _format_path(err.absolute_path)
        if err.validator == "additionalProperties":
            unknown = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            for name in unknown:
                errors.append(PolicyError(_format_path([*err.absolute_path, name]),
                                          "unknown field"))
            continue
        if err.validator == "pattern" and err.absolute_path and \
                err.absolute_path[-1] == "name":
            reason = ("must start with a letter and hold only letters, digits and "
                      "underscores (at most 64)")
        elif err.validator == "pattern" and "sha256" in str(err.validator_value):
            reason = "must be 'sha256:' followed by 64 lowercase hex digits"
        elif err.validator == "pattern" and "A-Za-z0-9-" in str(err.validator_value):
            reason = f"{err.instance!r} is not a valid host or domain name"
        else:
            reason = err.message
        errors.append(PolicyError(path, reason))
    errors.sort(key=lambda e: e.path)
    return errors


def apply_defaults(policy: dict[str, Any]) -> dict[str, Any]:
    """A copy of a (structurally valid) policy with every documented default filled in."""
    out = copy.deepcopy(policy)
    thresholds = out.setdefault("thresholds", {})
    for key, value in schema.DEFAULT_THRESHOLDS.items():
        thresholds.setdefault(key, value)
    out.setdefault("rules", [])
    out.setdefault("metaRules", [])
    lists = out.setdefault("lists", {})
    for kind, score in (("allow", schema.DEFAULT_ALLOW_SCORE),
                        ("block", schema.DEFAULT_BLOCK_SCORE)):
        block = lists.setdefault(kind, {})
        for key in ("senders", "domains", "uriHosts"):
            block.setdefault(key, [])
        block.setdefault("score", score)
    lists["allow"].setdefault("matchUnauthenticated", False)
    auth = out.setdefault("authentication", {})
    auth.setdefault("enabled", False)
    auth.setdefault("authservId", schema.DEFAULT_AUTHSERV_ID)
    dns = auth.setdefault("dns", {})
    dns.setdefault("servers", [])
    dns.setdefault("timeoutSeconds", schema.DEFAULT_DNS_TIMEOUT_SECONDS)
    dns.setdefault("budgetSeconds", schema.DEFAULT_DNS_BUDGET_SECONDS)
    dns.setdefault("cacheEntries", schema.DEFAULT_DNS_CACHE_ENTRIES)
    auth.setdefault("arc", {}).setdefault("trustedSealers", [])
    auth.setdefault("bulkGate", {}).setdefault("enabled", False)
    scores = auth.setdefault("scores", {})
    for name, (score, _description) in ALL_RULES.items():
        scores.setdefault(name, score)
    signatures = out.setdefault("signatures", {})
    signatures.setdefault("digests", [])
    signatures.setdefault("score", schema.DEFAULT_SIGNATURE_SCORE)
    if "model" in out:
        out["model"].setdefault("weight", schema.DEFAULT_MODEL_WEIGHT)
        if "configMapRef" in out["model"]:
            out["model"]["configMapRef"].setdefault("key", "model.json.gz")
    limits = out.setdefault("limits", {})
    limits.setdefault("maxScanBytes", schema.DEFAULT_MAX_SCAN_BYTES)
    return out


def validate_policy(policy: Any, *, base_dir: Path | None = None,
                    bound_compile_time: bool = True) -> list[PolicyError]:
    """Every error in `policy` (a parsed document); empty when it is valid.

    With `base_dir`, a `model.file` must exist there (the policy directory). Patterns are
    compiled in a child process allowed compile_seconds_for(rules) seconds of CPU
    (filter_server/compile_limits.py); `bound_compile_time=False` compiles them here,
    unbounded (for policies generated by trusted code)."""
    if not isinstance(policy, dict):
        return [PolicyError("", f"a policy must be a mapping, not {type(policy).__name__}")]
    errors = _schema_errors(policy)
    if errors:
        # Semantic checks below assume the structure is right.
        return _at_most(errors, stopped_early=len(errors) > MAX_ERRORS)
    policy = apply_defaults(policy)
    t = policy["thresholds"]
    if not t["tag"] <= t["quarantine"] <= t["reject"]:
        errors.append(PolicyError("thresholds", "must satisfy tag <= quarantine <= reject "
                                  f"(got {t['tag']}, {t['quarantine']}, {t['reject']})"))

    defined: dict[str, str] = {name: "built-in" for name in SYNTHETIC_RULES}
    # All patterns at once (one engine compile per target group), reported per rule below.
    pattern_reasons: dict[int | None, list[str]] = {}
    compile_seconds = compile_seconds_for(len(policy["rules"])) if bound_compile_time \
        else None
    for index, reason in pattern_problems(policy["rules"], compile_seconds=compile_seconds):
        pattern_reasons.setdefault(index, []).append(reason)
    for i, rule in enumerate(policy["rules"]):
        path = f"rules[{i}]"
        _check_name(rule["name"], path, defined, errors)
        if rule["target"] == "header" and "header" not in rule:
            errors.append(PolicyError(f"{path}.header",
                                      "required when target is 'header'"))
        if rule["target"] != "header" and "header" in rule:
            errors.append(PolicyError(f"{path}.header",
                                      f"only rules with target 'header' take a header "
                                      f"(target is {rule['target']!r})"))
        for problem in pattern_reasons.get(i, ()):
            errors.append(PolicyError(f"{path}.pattern", problem))
    for problem in pattern_reasons.get(None, ()):
        errors.append(PolicyError("rules", problem))

    parsed: dict[str, meta.MetaExpression] = {}
    for i, rule in enumerate(policy["metaRules"]):
        path = f"metaRules[{i}]"
        _check_name(rule["name"], path, defined, errors)
        try:
            parsed[rule["name"]] = meta.parse_meta(rule["expression"])
        except meta.MetaSyntaxError as exc:
            errors.append(PolicyError(f"{path}.expression", str(exc)))
        except RecursionError:
            errors.append(PolicyError(f"{path}.expression", "nested too deeply"))
    for i, rule in enumerate(policy["metaRules"]):
        expression = parsed.get(rule["name"])
        if expression is None:
            continue
        for name in sorted(expression.names() - set(defined)):
            errors.append(PolicyError(f"metaRules[{i}].expression",
                                      f"refers to unknown rule {name!r}"))
    cycle = _find_cycle(parsed)
    if cycle:
        where = next(i for i, r in enumerate(policy["metaRules"]) if r["name"] == cycle[0])
        errors.append(PolicyError(f"metaRules[{where}].expression",
                                  "meta rules form a cycle: " + " -> ".join(cycle)))

    errors += _authentication_errors(policy, parsed)

    model = policy.get("model")
    if model is not None:
        if "file" not in model and "configMapRef" not in model:
            errors.append(PolicyError("model", "needs either file or configMapRef"))
        if "file" in model and "configMapRef" in model:
            errors.append(PolicyError("model", "takes either file or configMapRef, not both"))
        if base_dir is not None and "file" in model and not (base_dir / model["file"]).is_file():
            errors.append(PolicyError("model.file",
                                      f"{model['file']!r} not found in {base_dir}"))
    return _at_most(errors)


def _authentication_errors(policy: dict[str, Any],
                           metas: dict[str, meta.MetaExpression]) -> list[PolicyError]:
    """What authentication settings leave impossible or unsafe (defaults applied)."""
    errors = []
    auth = policy["authentication"]
    for i, server in enumerate(auth["dns"]["servers"]):
        host = server[1:].partition("]")[0] if server.startswith("[") else \
            (server.rpartition(":")[0] if server.count(":") == 1 else server)
        port = server.rpartition("]:")[2] if server.startswith("[") and "]:" in server else \
            (server.rpartition(":")[2] if server.count(":") == 1 else "53")
        try:
            ipaddress.ip_address(host)
            if not 0 < int(port) < 65536:
                raise ValueError(port)
        except ValueError:
            errors.append(PolicyError(f"authentication.dns.servers[{i}]",
                                      f"{server!r} is not an IP address with an optional "
                                      "port (10.0.0.10, 10.0.0.10:53, fd00::a, [fd00::a]:53)"))
    if auth["dns"]["budgetSeconds"] < auth["dns"]["timeoutSeconds"]:
        errors.append(PolicyError("authentication.dns.budgetSeconds",
                                  "must be at least timeoutSeconds (one lookup must fit)"))
    allow = policy["lists"]["allow"]
    if not auth["enabled"] and not allow["matchUnauthenticated"] and \
            (allow["senders"] or allow["domains"]):
        errors.append(PolicyError(
            "lists.allow", "allow-listed senders and domains match only authenticated "
            "senders: set authentication.enabled (recommended), or set "
            "lists.allow.matchUnauthenticated to match the forgeable MAIL FROM and From "
            "header as written"))
    if auth["bulkGate"]["enabled"] and not auth["enabled"]:
        errors.append(PolicyError("authentication.bulkGate.enabled",
                                  "the bulk gate verifies DKIM: it needs "
                                  "authentication.enabled"))
    for i, rule in enumerate(policy["metaRules"]):
        expression = metas.get(rule["name"])
        if expression is None:
            continue
        off = set()
        if not auth["enabled"]:
            off |= expression.names() & set(AUTH_RULES)
        if not auth["bulkGate"]["enabled"]:
            off |= expression.names() & set(BULK_RULES)
        if off:
            errors.append(PolicyError(
                f"metaRules[{i}].expression",
                f"refers to {', '.join(sorted(off))}, which never fire(s) while "
                f"{'authentication' if off & set(AUTH_RULES) else 'the bulk gate'} is off"))
    return errors


def _check_name(name: str, path: str, defined: dict[str, str],
                errors: list[PolicyError]) -> None:
    if name in defined:
        other = defined[name]
        reason = ("is a built-in rule name" if other == "built-in"
                  else f"duplicate rule name {name!r} (first defined at {other})")
        errors.append(PolicyError(f"{path}.name", reason))
    else:
        defined[name] = path


def _find_cycle(parsed: dict[str, meta.MetaExpression]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(parsed[name].names()):
            if dep not in parsed:
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[name] = 2
        return None

    for name in parsed:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def parse_policy_text(text: str, source: str = "<policy>") -> Any:
    """Parse YAML (or JSON) text; raises PolicyInvalid with a located message on bad syntax."""
    try:
        document = load_bounded(text)
    except YamlTooCostly as exc:
        raise PolicyInvalid([PolicyError("", f"{source}: {exc}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyInvalid([PolicyError("", f"{source}: {where}not valid YAML: {problem}")]) \
            from None
    return unwrap_policy(document)


def unwrap_policy(document: Any) -> Any:
    """Accept a bare policy or a SpamPolicy resource (whose policy is `spec.policy`)."""
    if isinstance(document, dict) and document.get("kind") == "SpamPolicy":
        return (document.get("spec") or {}).get("policy", {})
    return document


def load_policy_file(path: Path, *, base_dir: Path | None = None) -> dict[str, Any]:
    """Read, validate and default a policy file; raises PolicyInvalid with every error."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyInvalid([PolicyError("", f"cannot read {path}: {exc}")]) from exc
    policy = parse_policy_text(text, str(path))
    errors = validate_policy(policy, base_dir=base_dir)
    if errors:
        raise PolicyInvalid(errors)
    return apply_defaults(policy)
