#!/usr/bin/env bash
# Build the process node agent (hack/nodeagent: the `nodeagent` and `podinit` binaries) into
# a cache outside the checkout, keyed by the module's go.mod/go.sum, its sources, the Go
# version and this recipe. A warm machine, even a fresh clone on it, rebuilds nothing. The
# last line printed on stdout is the bin directory.
#
#   scripts/nodeagent-build.sh            build if needed, print the bin dir
#   scripts/nodeagent-build.sh --print    print the bin dir if it is built, else fail (no build)
#
# Knobs (environment):
#   MAILWARDEN_NODEAGENT_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/mailwarden/nodeagent)
#   GO                          the go command (default /usr/local/go/bin/go if present, else go)
#   NODEAGENT_BUILD_JOBS        go build -p (default 2: the CI machine has 2 cores)
# Modules come from the Go proxy only (GOTOOLCHAIN=local: no toolchain download; go.sum is
# complete, so -mod=readonly never edits it). -trimpath matches scripts/kube-build.sh, so
# the k8s.io packages both modules share are compiled once in the Go build cache.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
module=hack/nodeagent

log() { printf '[nodeagent-build] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Bump when the way the binaries are built changes: it is part of the cache key.
recipe=1

go_cmd="${GO:-}"
if [[ -z "$go_cmd" ]]; then
  if [[ -x /usr/local/go/bin/go ]]; then go_cmd=/usr/local/go/bin/go; else go_cmd=go; fi
fi
command -v "$go_cmd" >/dev/null || die "no Go toolchain ('$go_cmd'); install Go >= 1.26 or set GO"
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
go_version="$("$go_cmd" env GOVERSION)"
case "$go_version" in
  go1.2[6-9]*|go1.[3-9][0-9]*) ;;
  *) die "hack/nodeagent needs Go >= 1.26 (virtual-kubelet v1.14 and k8s.io v0.37 say 'go 1.26.0'); $go_cmd is $go_version" ;;
esac

# The sources are part of the key (unlike the control plane's, they are ours and change).
key="$(
  { echo "recipe=$recipe go=$go_version $("$go_cmd" env GOOS GOARCH | tr '\n' ' ')"
    find "$module" -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 \
      | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
)"
cache="${MAILWARDEN_NODEAGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mailwarden/nodeagent}"
dest="$cache/$key"
bins=(nodeagent podinit)

complete() {
  [[ -f "$dest/bin/.complete" ]] || return 1
  local b; for b in "${bins[@]}"; do [[ -x "$dest/bin/$b" ]] || return 1; done
}

if [[ "${1:-}" == "--print" ]]; then
  complete || die "not built yet: run scripts/nodeagent-build.sh"
  echo "$dest/bin"; exit 0
fi
[[ $# -eq 0 ]] || die "usage: scripts/nodeagent-build.sh [--print]"

mkdir -p "$cache"
if complete; then
  log "up to date ($dest)"
  echo "$dest/bin"; exit 0
fi
exec 9>"$cache/.lock"
if ! flock -n 9; then
  log "another nodeagent-build holds $cache/.lock; waiting"
  flock 9
fi
if complete; then
  log "built meanwhile by another run ($dest)"
  echo "$dest/bin"; exit 0
fi

jobs="${NODEAGENT_BUILD_JOBS:-2}"
tmp="$(mktemp -d "$cache/.build-$key.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
log "building nodeagent and podinit ($module, $go_version, -p $jobs) into $dest"
(cd "$module" && "$go_cmd" build -p "$jobs" -trimpath -ldflags "-s -w" -o "$tmp/bin/podinit" ./cmd/podinit) \
  || die "building podinit failed"
(cd "$module" && "$go_cmd" build -p "$jobs" -trimpath -ldflags "-s -w" -o "$tmp/bin/nodeagent" ./cmd/nodeagent) \
  || die "building nodeagent failed"
touch "$tmp/bin/.complete"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
log "built in $((SECONDS - start)) s"
# Builds untouched for a week go (each is ~60 MB and the key changes with every source
# edit); a younger one may still be running in another checkout's tests.
find "$cache" -mindepth 1 -maxdepth 1 -type d -name '????????????????' -mtime +7 -exec rm -rf {} +
echo "$dest/bin"
