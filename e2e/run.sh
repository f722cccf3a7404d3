#!/usr/bin/env bash
# End-to-end on a real cluster: a kind cluster (e2e/kind.yaml), the image built from the
# Dockerfile and loaded into it, metrics-server, the chart, the model ConfigMap, the
# examples, then the pytest suite in e2e/. Diagnostics are collected whenever something
# fails; the cluster is deleted at the end unless KEEP_CLUSTER=1.
#
#   e2e/run.sh [PYTEST ARGS...]          e.g. e2e/run.sh -k rollout
#
# Environment:
#   KEEP_CLUSTER=1        keep the cluster afterwards (prints how to reach it)
#   REUSE_CLUSTER=1       use an existing cluster of the same name instead of recreating it
#   E2E_CLUSTER           cluster name (default mailwarden-e2e)
#   E2E_IMAGE             image tag to build and load (default mailwarden:e2e)
#   E2E_OUT               kubeconfig, model, logs and diagnostics (default e2e/out)
#   E2E_NO_BOOTSTRAP=1    skip scripts/bootstrap.sh (.venv and the corpus already there)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

cluster="${E2E_CLUSTER:-mailwarden-e2e}"
image="${E2E_IMAGE:-mailwarden:e2e}"
out="${E2E_OUT:-$root/e2e/out}"
namespace="mailwarden-e2e"
system_namespace="mailwarden-system"
metrics_server_version="v0.7.2"
metrics_server_url="https://github.com/kubernetes-sigs/metrics-server/releases/download/${metrics_server_version}/components.yaml"
kubeconfig="$out/kubeconfig"
created=0
step_name="start"

# kubectl and helm may come from scripts/bootstrap.sh (.cache/bin); the user's own first.
export PATH="$PATH:$root/.cache/bin"

log() { printf '[e2e] %s\n' "$*" >&2; }
step() { step_name="$1"; log "== $1"; }

# --- prerequisites ---------------------------------------------------------------------
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
k() { kubectl --kubeconfig "$kubeconfig" "$@"; }

# --- diagnostics and teardown ----------------------------------------------------------
collect_diagnostics() {
  local dir="$out/diagnostics"
  rm -rf "$dir" && mkdir -p "$dir"
  log "collecting diagnostics into $dir"
  k get nodes -o wide --show-labels >"$dir/nodes.txt" 2>&1 || true
  k describe nodes >"$dir/nodes-describe.txt" 2>&1 || true
  k get all,spampolicies,unsubscribestores,pdb,hpa,configmaps,secrets,pvc,jobs -A -o wide \
    >"$dir/objects.txt" 2>&1 || true
  k get events -A --sort-by=.lastTimestamp >"$dir/events.txt" 2>&1 || true
  k get spampolicies,unsubscribestores -A -o yaml >"$dir/resources.yaml" 2>&1 || true
  local ns pod
  for ns in "$system_namespace" "$namespace" kube-system; do
    k -n "$ns" describe pods,deployments,replicasets,services,hpa,pdb,jobs \
      >"$dir/describe-$ns.txt" 2>&1 || true
    k -n "$ns" describe spampolicies,unsubscribestores >>"$dir/describe-$ns.txt" 2>&1 || true
    for pod in $(k -n "$ns" get pods -o name 2>/dev/null); do
      k -n "$ns" logs "$pod" --all-containers --prefix --timestamps \
        >"$dir/logs-$ns-${pod#pod/}.txt" 2>&1 || true
      k -n "$ns" logs "$pod" --all-containers --prefix --timestamps --previous \
        >>"$dir/logs-$ns-${pod#pod/}.previous.txt" 2>/dev/null || true
    done
  done
  kind export logs "$dir/kind" --name "$cluster" >/dev/null 2>&1 || true
}

finish() {
  local status=$?
  trap - EXIT
  if ((status != 0)); then
    log "FAILED during: $step_name (exit $status)"
    if [[ -f "$kubeconfig" ]]; then collect_diagnostics || true; fi
  fi
  if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
    log "KEEP_CLUSTER=1: cluster $cluster kept; export KUBECONFIG=$kubeconfig"
    log "delete it with: kind delete cluster --name $cluster"
  elif ((created)); then
    log "deleting cluster $cluster"
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
  exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM

# --- python side (pytest, `mailwarden train`) ------------------------------------------
step "bootstrap (.venv, corpus)"
if [[ "${E2E_NO_BOOTSTRAP:-0}" != 1 ]]; then
  scripts/bootstrap.sh
fi
mw=".venv/bin/mailwarden"

# --- cluster ---------------------------------------------------------------------------
step "kind cluster $cluster"
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  if [[ "${REUSE_CLUSTER:-0}" == 1 ]]; then
    log "reusing the existing cluster $cluster"
    kind export kubeconfig --name "$cluster" --kubeconfig "$kubeconfig"
  else
    log "deleting a leftover cluster $cluster (REUSE_CLUSTER=1 keeps it)"
    kind delete cluster --name "$cluster"
  fi
fi
if [[ ! -f "$kubeconfig" ]] || ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  rm -f "$kubeconfig"
  created=1
  kind create cluster --name "$cluster" --config e2e/kind.yaml --kubeconfig "$kubeconfig" \
    --wait 300s
fi
k get nodes -L topology.kubernetes.io/zone

step "image $image"
docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"

step "metrics-server $metrics_server_version"
k apply -f "$metrics_server_url"
# kind's kubelets serve self-signed certificates.
if ! k -n kube-system get deployment metrics-server \
  -o jsonpath='{.spec.template.spec.containers[0].args}' | grep -q -- --kubelet-insecure-tls; then
  k -n kube-system patch deployment metrics-server --type=json \
    -p '[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--kubelet-insecure-tls"}]'
fi
k -n kube-system rollout status deployment/metrics-server --timeout=300s

step "chart"
helm upgrade --install mailwarden charts/mailwarden --kubeconfig "$kubeconfig" \
  --namespace "$system_namespace" --create-namespace \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" \
  --set image.pullPolicy=Never --wait --timeout 10m
k -n "$system_namespace" get pods -o wide

step "namespace $namespace (Pod Security: restricted)"
k create namespace "$namespace" --dry-run=client -o yaml | k apply -f -
k label --overwrite namespace "$namespace" pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/enforce-version=latest

step "model ConfigMap (mailwarden train on the corpus' train split)"
rm -rf "$out/split"
"$mw" corpus split --out "$out/split"
"$mw" train --ham "$out/split/train/ham" --spam "$out/split/train/spam" -o "$out/model.json.gz"
k -n "$namespace" create configmap mailwarden-model \
  --from-file=model.json.gz="$out/model.json.gz" --dry-run=client -o yaml |
  k apply --server-side --force-conflicts -f -

step "examples"
# Examples without a namespace of their own are meant to be applied as they are; the others
# need prerequisites (a PostgreSQL, Secrets, namespace `mail`): the suite checks them with a
# server-side dry run instead.
for file in examples/*.yaml; do
  if grep -qE '^[[:space:]]+namespace:' "$file"; then
    log "not applied (needs prerequisites; dry-run checked by the suite): $file"
    continue
  fi
  # The webhook may still be starting right after the chart is installed.
  for attempt in $(seq 1 24); do
    if k -n "$namespace" apply -f "$file"; then break; fi
    ((attempt < 24)) || exit 1
    sleep 5
  done
done

step "pytest e2e/"
# The last command: with pipefail, pytest's status is the script's (the EXIT trap reports it).
MAILWARDEN_E2E_KUBECONFIG="$kubeconfig" MAILWARDEN_E2E_NAMESPACE="$namespace" \
  MAILWARDEN_E2E_IMAGE="$image" MAILWARDEN_E2E_SPLIT="$out/split" \
  .venv/bin/python -m pytest e2e -v -rA -p no:cacheprovider \
  --junitxml="$out/junit.xml" "$@" 2>&1 | tee "$out/pytest.log"
