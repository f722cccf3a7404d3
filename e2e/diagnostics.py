"""What the suite keeps when something failed: every object, events, `describe` of the
workloads and custom resources, and every pod's logs (also the previous instance's), read
with kubectl from whichever provider's cluster; the provider adds its own component logs."""

from __future__ import annotations

import shutil
from pathlib import Path

from e2e.kube import Kube

NAMESPACES = ("mailwarden-system", "mailwarden-e2e", "mail", "kube-system")


def _write(path: Path, kube: Kube, *args: str, namespaced: bool = False) -> None:
    try:
        result = kube.run(*args, check=False, namespaced=namespaced, timeout=120)
        path.write_text(result.stdout + result.stderr)
    except Exception as exc:  # noqa: BLE001 -- diagnostics never hide the real failure
        path.write_text(f"could not collect: {exc}\n")


def collect(kube: Kube, directory: Path, namespaces: tuple[str, ...] = NAMESPACES) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    _write(directory / "nodes.txt", kube, "get", "nodes", "-o", "wide", "--show-labels")
    _write(directory / "nodes-describe.txt", kube, "describe", "nodes")
    _write(directory / "objects.txt", kube, "get",
           "all,spampolicies,unsubscribestores,pdb,hpa,configmaps,secrets,pvc,jobs", "-A",
           "-o", "wide")
    _write(directory / "pv.txt", kube, "get", "pv,storageclass", "-o", "wide")
    _write(directory / "events.txt", kube, "get", "events", "-A", "--sort-by=.lastTimestamp")
    _write(directory / "resources.yaml", kube, "get", "spampolicies,unsubscribestores", "-A",
           "-o", "yaml")
    for ns in namespaces:
        there = kube.with_namespace(ns)
        _write(directory / f"describe-{ns}.txt", there, "describe",
               "pods,deployments,replicasets,services,hpa,pdb,jobs,spampolicies,"
               "unsubscribestores", namespaced=True)
        pods = there.run("get", "pods", "-o", "name", check=False).stdout.split()
        for pod in pods:
            name = pod.removeprefix("pod/")
            _write(directory / f"logs-{ns}-{name}.txt", there, "logs", pod, "--all-containers",
                   "--prefix", "--timestamps", namespaced=True)
            previous = there.run("logs", pod, "--all-containers", "--prefix", "--timestamps",
                                 "--previous", check=False, timeout=120)
            if previous.returncode == 0 and previous.stdout:  # only after a restart
                (directory / f"logs-{ns}-{name}.previous.txt").write_text(previous.stdout)
