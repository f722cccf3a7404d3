#!/usr/bin/env bash
# The e2e suite on kind (the `kind` provider, e2e/providers/kind.py): a kind cluster
# (e2e/kind.yaml), the image built from the Dockerfile and loaded into it, metrics-server,
# then the same suite as everywhere -- the chart, the model, the examples, e2e/test_*.py.
# Diagnostics are collected whenever something fails; the cluster is deleted at the end
# unless KEEP_CLUSTER=1. Without Docker, `scripts/test.sh` runs the same suite on the
# process provider (Kubernetes' own control plane on this machine); see docs/e2e.md.
#
#   e2e/run.sh [PYTEST ARGS...]          e.g. e2e/run.sh -k rollout
#
# Environment:
#   KEEP_CLUSTER=1        keep the cluster afterwards (prints how to reach it)
#   REUSE_CLUSTER=1       use an existing cluster of the same name instead of recreating it
#   E2E_CLUSTER           cluster name (default mailwarden-e2e)
#   E2E_OUT               kubeconfig, model, logs and diagnostics (default e2e/out)
#   E2E_NO_BOOTSTRAP=1    skip scripts/bootstrap.sh (.venv and the corpus already there)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${E2E_OUT:-$root/e2e/out}"

# kubectl and helm may come from scripts/bootstrap.sh (.cache/bin); the user's own first.
export PATH="$PATH:$root/.cache/bin"

log() { printf '[e2e] %s\n' "$*" >&2; }

# --- prerequisites (checked before anything is created) ------------------------------
missing=()
if ! command -v docker >/dev/null 2>&1; then
  missing+=("no container engine (docker not installed)")
elif ! docker_error="$(docker info --format '{{.ServerVersion}}' 2>&1 >/dev/null)"; then
  missing+=("no container engine (docker info failed: $(tail -n 1 <<<"$docker_error"))")
fi
command -v kind >/dev/null 2>&1 || missing+=("kind not installed (https://kind.sigs.k8s.io)")
for tool in kubectl helm; do
  command -v "$tool" >/dev/null 2>&1 ||
    missing+=("$tool not installed (scripts/bootstrap.sh puts one in .cache/bin)")
done
if ((${#missing[@]})); then
  log "cannot run the e2e suite:"
  for item in "${missing[@]}"; do log "  - $item"; done
  exit 2
fi

mkdir -p "$out"
if [[ "${E2E_NO_BOOTSTRAP:-0}" != 1 ]]; then
  scripts/bootstrap.sh
fi

# The last command: with pipefail, pytest's status is the script's.
MAILWARDEN_E2E_PROVIDER=kind E2E_OUT="$out" \
  .venv/bin/python -m pytest e2e -v -rA -p no:cacheprovider \
  --junitxml="$out/junit.xml" "$@" 2>&1 | tee "$out/pytest.log"
