"""Defaults and cross-field checks of a SpamPolicy spec.

The API server applies the CRD's defaults and CEL rules; the operator applies the same
defaults (read from the same schema, so there is one source) and repeats the cross-field
checks, because it must behave the same when talking to a server that skipped them.
"""

from __future__ import annotations

import copy
from typing import Any

from mailwarden_operator.common.spec import (
    apply_schema_defaults,
    cpu_request_errors,
    name_errors,
    positive_count_errors,
)
from mailwarden_operator.spampolicy import crd, learning, naming


def with_defaults(spec: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of `spec` with every CRD default filled in, as the API server would."""
    return apply_schema_defaults(copy.deepcopy(spec or {}), crd.SPEC_SCHEMA)


def serving_errors(spec: dict[str, Any], name: str) -> list[str]:
    """Cross-field problems of the serving part (the CEL rules, repeated in Python)."""
    errors = []
    replicas = spec["replicas"]
    if replicas["min"] > replicas["max"]:
        errors.append(f"replicas.min ({replicas['min']}) must not exceed replicas.max "
                      f"({replicas['max']})")
    errors += positive_count_errors("rollout.maxSurge", spec["rollout"]["maxSurge"])
    errors += positive_count_errors("disruption.maxUnavailable",
                                    spec["disruption"]["maxUnavailable"])
    if "grpc" not in spec.get("protocols", ["grpc"]):
        errors.append("protocols must include grpc (the probes and clients use it)")
    errors += cpu_request_errors(spec.get("resources"))
    errors += name_errors(naming.KIND, name, naming.MAX_NAME_LENGTH)
    errors += golden_corpus_errors(spec.get("goldenCorpus"))
    errors += learning.spec_errors(spec)
    return errors


def golden_corpus_errors(corpus: dict[str, Any] | None) -> list[str]:
    """The CEL rules of goldenCorpus, configMaps[] and directories[], repeated."""
    errors = []
    if corpus is not None and not corpus.get("configMaps") and not corpus.get("directories"):
        errors.append("goldenCorpus names configMaps, directories or both")
    for field in ("configMaps", "directories"):
        for index, ref in enumerate((corpus or {}).get(field) or []):
            if "atMost" in ref and ref.get("label") != "ham":
                errors.append(f"goldenCorpus.{field}[{index}]: atMost is for ham; spam sets "
                              "take atLeast")
            if "atLeast" in ref and ref.get("label") != "spam":
                errors.append(f"goldenCorpus.{field}[{index}]: atLeast is for spam; ham "
                              "sets take atMost")
    for index, ref in enumerate((corpus or {}).get("directories") or []):
        if unsafe_corpus_path(str(ref.get("path", ""))):
            errors.append(f"goldenCorpus.directories[{index}]: path is relative to the "
                          "namespace's folder: no leading / and no ..")
    return errors


def unsafe_corpus_path(path: str) -> bool:
    """Whether a goldenCorpus.directories[].path could leave its namespace's folder."""
    return path.startswith("/") or ".." in path.split("/")
