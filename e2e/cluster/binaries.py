"""Where the control-plane binaries are: the cache scripts/kube-build.sh fills."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "kube-build.sh"
BIN_ENV = "MAILWARDEN_KUBE_BIN"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
            "kube-proxy", "kubectl", "metrics-server")


class BinariesMissing(RuntimeError):
    """The binaries are not built (or $MAILWARDEN_KUBE_BIN points at an incomplete dir)."""


def bin_dir() -> Path:
    """$MAILWARDEN_KUBE_BIN if set, else the directory scripts/kube-build.sh built (this
    never builds: bootstrap does, and a test must not start a half-hour compile)."""
    configured = os.environ.get(BIN_ENV)
    if configured:
        path = Path(configured)
        source = f"${BIN_ENV}={configured}"
    else:
        result = subprocess.run([str(BUILD_SCRIPT), "--print"], capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, timeout=60)
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise BinariesMissing(f"Kubernetes binaries not built ({reason}); run "
                                  "scripts/bootstrap.sh or scripts/kube-build.sh")
        path = Path(result.stdout.strip().splitlines()[-1])
        source = "scripts/kube-build.sh --print"
    missing = [name for name in BINARIES if not os.access(path / name, os.X_OK)]
    if missing:
        raise BinariesMissing(f"{source}: {path} lacks {', '.join(missing)}")
    return path


def versions(path: Path) -> dict[str, str]:
    """Component -> version, from the versions.txt kube-build.sh writes beside them."""
    found: dict[str, str] = {}
    listing = path / "versions.txt"
    if listing.is_file():
        for line in listing.read_text().splitlines():
            name, _, version = line.partition(" ")
            if version:
                found[name] = version
    return found
