"""What the suite installs on any provider's cluster, as docs/operator.md tells a user to:
the chart with the real helm, a namespace that enforces the `restricted` Pod Security level,
a model trained on the corpus in a ConfigMap, and the examples that need nothing else."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from e2e.kube import Kube, KubectlError
from e2e.providers.base import Cluster

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "mailwarden"
RELEASE = "mailwarden"
SYSTEM_NAMESPACE = "mailwarden-system"
MAILWARDEN = Path(sys.executable).parent / "mailwarden"
# Examples meant to be applied as they are (the others need a PostgreSQL, Secrets and their
# own namespace: test_15_examples prepares those).
DEV_EXAMPLES = ("spampolicy.yaml", "unsubscribestore-dev.yaml")


class InstallError(AssertionError):
    pass


@dataclass(frozen=True)
class HelmResult:
    argv: list[str]
    returncode: int
    output: str
    seconds: float


def helm(cluster: Cluster, *args: str, timeout: float = 600) -> HelmResult:
    """The real helm (scripts/bootstrap.sh puts one in .cache/bin) against `cluster`."""
    binary = shutil.which("helm", path=cluster.path)
    if binary is None:
        raise InstallError(f"no helm on PATH {cluster.path} (scripts/bootstrap.sh installs one)")
    argv = [binary, "--kubeconfig", str(cluster.kubeconfig), *args]
    began = time.monotonic()
    result = subprocess.run(argv, env=cluster.env(), capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    return HelmResult(argv=argv, returncode=result.returncode,
                      output=(result.stdout + result.stderr).strip(),
                      seconds=time.monotonic() - began)


def chart_args(cluster: Cluster) -> list[str]:
    args = [RELEASE, str(CHART), "--namespace", SYSTEM_NAMESPACE]
    for key, value in sorted(cluster.chart_values.items()):
        args += ["--set", f"{key}={value}"]
    return args


def install_chart(cluster: Cluster) -> HelmResult:
    """`helm install` (or, on a reused cluster that has the release, `helm upgrade`), waiting
    until the operator Deployment is available."""
    exists = helm(cluster, "status", RELEASE, "--namespace", SYSTEM_NAMESPACE).returncode == 0
    verb = ["upgrade"] if exists else ["install", "--create-namespace"]
    result = helm(cluster, *verb, *chart_args(cluster), "--wait", "--timeout", "5m")
    if result.returncode != 0:
        raise InstallError(f"helm {verb[0]} of {CHART.relative_to(REPO)} failed "
                           f"({result.returncode}) after {result.seconds:.0f} s:\n{result.output}")
    return result


def restricted_namespace(kube: Kube, name: str) -> None:
    """A namespace whose pods must pass the `restricted` Pod Security level."""
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest"}}}
    kube.apply(manifest, namespaced=False)


def model_cache() -> Path:
    """Where the trained model is kept between runs: keyed by the corpus (file names and
    sizes) and the code that splits and trains (every Python file of `mailwarden` and
    `filter_server`), so a warm machine trains once and any change retrains."""
    digest = hashlib.sha256()
    for package in ("mailwarden", "filter_server"):
        for path in sorted((REPO / package).rglob("*.py")):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    corpus = REPO / ".cache" / "corpus"
    for path in sorted(corpus.rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(corpus)} {path.stat().st_size}\n".encode())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mailwarden" / "e2e-model" / digest.hexdigest()[:16] / "model.json.gz"


def start_training(out: Path) -> subprocess.Popen[str]:
    """`mailwarden corpus split` (the held-out messages the tests send) and, unless the
    cache has it, `mailwarden train` on the train split, in the background while the
    cluster comes up. The model lands in out/model.json.gz."""
    split = out / "split"
    shutil.rmtree(split, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    cached = model_cache()
    script = f'set -e; "{MAILWARDEN}" corpus split --out "{split}"; '
    if cached.is_file():
        script += f'cp "{cached}" "{out}/model.json.gz"'
    else:
        script += (f'"{MAILWARDEN}" train --ham "{split}/train/ham" --spam "{split}/train/spam" '
                   f'-o "{out}/model.json.gz"; mkdir -p "{cached.parent}"; '
                   f'cp "{out}/model.json.gz" "{cached}.tmp"; mv "{cached}.tmp" "{cached}"')
    return subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)


def finish_training(proc: subprocess.Popen[str], out: Path, timeout: float = 900) -> Path:
    output, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise InstallError(f"splitting the corpus or training the model failed "
                           f"({proc.returncode}):\n{output}")
    return out / "model.json.gz"


def model_configmap(kube: Kube, model: Path) -> None:
    """`kubectl create configmap mailwarden-model --from-file=model.json.gz=...`, as the docs
    say (server-side apply: no last-applied annotation, which would cap it at 256 KiB)."""
    text = kube.run("create", "configmap", "mailwarden-model",
                    f"--from-file=model.json.gz={model}", "--dry-run=client", "-o", "yaml").stdout
    kube.run("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)


def apply_examples(kube: Kube, names: tuple[str, ...] = DEV_EXAMPLES,
                   timeout: float = 120) -> None:
    """`kubectl apply -f examples/NAME`; the webhook may still be starting right after the
    chart is installed, so an apply refused for that reason is retried."""
    for name in names:
        deadline = time.monotonic() + timeout
        while True:
            try:
                kube.run("apply", "-f", str(REPO / "examples" / name))
                break
            except KubectlError as exc:
                if "failed calling webhook" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(3)
