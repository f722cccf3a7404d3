"""The kind provider, driven against stand-in `kind`, `docker` and `kubectl` that record their
command lines (there is no container engine here to run the real ones): it creates the
cluster from e2e/kind.yaml with its own kubeconfig, builds the image once under both tags
the suite and the chart use, loads both, installs and patches metrics-server, finds the
address pods reach this host at, and deletes only a cluster it created."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from e2e.providers.kind import METRICS_SERVER_URL, KindProvider, chart_image

REPO = Path(__file__).resolve().parents[2]
NETWORK = [{"IPAM": {"Config": [{"Subnet": "fc00:f853:ccd:e793::/64"},
                                {"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}]}}]


def recorder(directory: Path, log: Path, existing: str) -> str:
    """Stand-ins that append their argv (one JSON list per line) to `log`. (`python3 -I`:
    run from the checkout, its operator/ would shadow the standard library's module.)"""
    directory.mkdir()
    outputs = {
        "kind": f'if [ "$1 $2" = "get clusters" ]; then cat "{existing}"; fi',
        "docker": ("if [ \"$1 $2\" = \"network inspect\" ]; then echo '"
                   + json.dumps(NETWORK) + "'; fi"),
        "kubectl": 'case "$*" in *jsonpath*) echo \'["--cert-dir=/tmp"]\';; esac',
    }
    for name, body in outputs.items():
        path = directory / name
        path.write_text("#!/bin/sh\n"
                        f"python3 -I -c 'import json,sys; print(json.dumps(sys.argv[1:]))' \"$@\""
                        f" >> \"{log}\"\n{body}\nexit 0\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (directory / "helm").write_text("#!/bin/sh\nexit 0\n")
    (directory / "helm").chmod(0o755)
    return str(directory)


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    log, existing = tmp_path / "calls.log", tmp_path / "clusters.txt"
    existing.write_text("")
    monkeypatch.setenv("PATH", recorder(tmp_path / "bin", log, str(existing)) + os.pathsep
                       + "/usr/bin:/bin")
    for name in ("KEEP_CLUSTER", "REUSE_CLUSTER", "E2E_CLUSTER"):
        monkeypatch.delenv(name, raising=False)
    return log, existing


def test_up_makes_the_cluster_the_image_and_metrics_server(tools: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    log, _ = tools
    provider = KindProvider()
    assert provider.skip_reason() is None
    out = tmp_path / "out"
    cluster = provider.up(out)
    argv = calls(log)
    kubeconfig = str(out / "kubeconfig")
    assert ["create", "cluster", "--name", "mailwarden-e2e", "--config",
            str(REPO / "e2e" / "kind.yaml"), "--kubeconfig", kubeconfig, "--wait",
            "300s"] in argv
    assert ["build", "-t", "mailwarden:e2e", "-t", chart_image(), str(REPO)] in argv
    for image in ("mailwarden:e2e", chart_image()):
        assert ["load", "docker-image", image, "--name", "mailwarden-e2e"] in argv
    assert ["apply", "-f", METRICS_SERVER_URL] in argv
    patch = next(a for a in argv if a[:2] == ["-n", "kube-system"] and "patch" in a)
    assert "--kubelet-insecure-tls" in patch[-1]
    assert cluster.kubeconfig == out / "kubeconfig" and cluster.image == "mailwarden:e2e"
    assert (cluster.host_address, cluster.audit_log) == ("172.18.0.1", None)
    assert cluster.pod_sources == ("172.18.0.0/16", "10.244.0.0/16")
    assert chart_image().startswith("ghcr.io/mailwarden/mailwarden:")

    provider.down()
    assert calls(log)[-1] == ["delete", "cluster", "--name", "mailwarden-e2e"]


def test_an_existing_cluster_is_reused_only_when_asked(tools: tuple[Path, Path],
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    log, existing = tools
    existing.write_text("mailwarden-e2e\n")
    monkeypatch.setenv("REUSE_CLUSTER", "1")
    provider = KindProvider()
    provider.up(tmp_path / "out")
    argv = calls(log)
    assert ["export", "kubeconfig", "--name", "mailwarden-e2e", "--kubeconfig",
            str(tmp_path / "out" / "kubeconfig")] in argv
    assert not any(a[:2] in (["create", "cluster"], ["delete", "cluster"]) for a in argv)
    provider.down()  # kept
    assert not any(a[:2] == ["delete", "cluster"] for a in calls(log))
