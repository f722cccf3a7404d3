"""What the kubelet does with a rendered pod, for the tests that start a rendered container
outside a cluster (the operator contract tests, the image rehearsal, the fault suite's
simulated pods):

- `container_env`: the values the kubelet gives a container's `env` entries — literal
  values, `fieldRef` (the pod's name and namespace) and `resourceFieldRef` (the container's
  own requests and limits);
- `project_configmap`: a ConfigMap volume, laid out as the kubelet projects it (the same
  atomic `..data` layout local mode writes, `mailwarden_local.projection`).
"""

from __future__ import annotations

import base64
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

from mailwarden_local.projection import project

_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
             "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def quantity(text: str | int) -> Decimal:
    """A Kubernetes resource quantity ("512Mi", "250m", "1G", "2") as a number."""
    text = str(text).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix) and text[:-len(suffix)]:
            return Decimal(text[:-len(suffix)]) * Decimal(_SUFFIXES[suffix])
    return Decimal(text)


def container_env(container: dict[str, Any], fields: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet sets it. `fields` holds the pod's
    fieldRef values ("metadata.name", ...). A resourceFieldRef to a resource the container
    does not set is left out (the kubelet would give the node's allocatable amount)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[item["name"]] = fields[source["fieldRef"]["fieldPath"]]
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            kind, _, resource = ref["resource"].partition(".")
            amount = container.get("resources", {}).get(kind, {}).get(resource)
            if amount is not None:
                # The kubelet rounds up to a whole number of divisors.
                value = quantity(amount) / quantity(ref.get("divisor", "1"))
                env[item["name"]] = str(math.ceil(value))
        else:
            raise ValueError(f"env {item['name']}: unsupported source {sorted(source)}")
    return env


def project_configmap(configmap: dict[str, Any], directory: Path) -> Path:
    """Lay a ConfigMap out the way the kubelet projects a volume: the files in a
    timestamped directory, `..data` pointing at it, one symlink per key through `..data`."""
    files = {key: value.encode() for key, value in (configmap.get("data") or {}).items()}
    files.update({key: base64.b64decode(value)
                  for key, value in (configmap.get("binaryData") or {}).items()})
    project(directory, files)
    return directory
