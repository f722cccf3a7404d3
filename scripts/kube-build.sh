#!/usr/bin/env bash
# Build the real Kubernetes control-plane components from their Go modules (hack/kube,
# hack/etcd, hack/metrics-server) into a cache outside the checkout, keyed by the modules'
# go.mod/go.sum, the Go version and this recipe. A warm machine, even a fresh clone on it,
# rebuilds nothing. The last line printed on stdout is the bin directory.
#
#   scripts/kube-build.sh            build if needed, print the bin dir
#   scripts/kube-build.sh --print    print the bin dir if it is built, else fail (no build)
#
# Knobs (environment):
#   MAILWARDEN_KUBE_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/mailwarden/kube)
#   GO                      the go command (default /usr/local/go/bin/go if present, else go)
#   KUBE_BUILD_JOBS         go build -p (default 2: the CI machine has 2 cores)
# Modules come from the configured Go module proxy only (GOPROXY without "direct";
# GOTOOLCHAIN=local, so no toolchain download); go.sum is complete, so -mod=readonly never
# edits it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

log() { printf '[kube-build] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Bump when the way the binaries are built changes (flags, ldflags, outputs): it is part of
# the cache key, so every machine rebuilds once.
recipe=1
modules=(hack/kube hack/etcd hack/metrics-server)

go_cmd="${GO:-}"
if [[ -z "$go_cmd" ]]; then
  if [[ -x /usr/local/go/bin/go ]]; then go_cmd=/usr/local/go/bin/go; else go_cmd=go; fi
fi
command -v "$go_cmd" >/dev/null || die "no Go toolchain ('$go_cmd'); install Go >= 1.26 or set GO"
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
go_version="$("$go_cmd" env GOVERSION)"
case "$go_version" in
  go1.2[6-9]*|go1.[3-9][0-9]*) ;;
  *) die "hack/kube needs Go >= 1.26 (k8s.io/kubernetes v1.37 says 'go 1.26.0'); $go_cmd is $go_version" ;;
esac

key="$(
  { echo "recipe=$recipe go=$go_version $("$go_cmd" env GOOS GOARCH | tr '\n' ' ')"
    for m in "${modules[@]}"; do sha256sum "$m/go.mod" "$m/go.sum"; done
  } | sha256sum | cut -c1-16
)"
cache="${MAILWARDEN_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mailwarden/kube}"
dest="$cache/$key"
bins=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl etcd metrics-server)

complete() {
  [[ -f "$dest/bin/.complete" ]] || return 1
  local b; for b in "${bins[@]}"; do [[ -x "$dest/bin/$b" ]] || return 1; done
}

if [[ "${1:-}" == "--print" ]]; then
  complete || die "not built yet: run scripts/kube-build.sh"
  echo "$dest/bin"; exit 0
fi
[[ $# -eq 0 ]] || die "usage: scripts/kube-build.sh [--print]"

mkdir -p "$cache"
if complete; then
  log "up to date ($dest)"
  echo "$dest/bin"; exit 0
fi

# Two checkouts on one machine (worktrees) may ask at once: one builds, the other waits and
# then finds the result. The Go build cache is shared as well, so the wait is the cheap part.
exec 9>"$cache/.lock"
if ! flock -n 9; then
  log "another kube-build holds $cache/.lock; waiting"
  flock 9
fi
if complete; then
  log "built meanwhile by another run ($dest)"
  echo "$dest/bin"; exit 0
fi

# Modules come from a module proxy only: drop "direct" (version-control fetches) and "off".
configured_proxy="$("$go_cmd" env GOPROXY)"
GOPROXY="$(tr ',|' '\n' <<<"$configured_proxy" | grep -vx -e direct -e off | paste -sd, -)" || true
[[ -n "$GOPROXY" ]] || die "GOPROXY='$configured_proxy' names no module proxy"
export GOPROXY
jobs="${KUBE_BUILD_JOBS:-2}"
tmp="$(mktemp -d "$cache/.build-$key.XXXXXX")"
ticker=""
cleanup() {
  [[ -z "$ticker" ]] || kill "$ticker" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/bin"

# The version the binaries report comes from the module graph (what is actually compiled),
# the build date from the proxy's release time of that module: reproducible, no clock.
modver() { (cd "$1" && "$go_cmd" list -m -f '{{.Version}}' "$2"); }
modtime() { (cd "$1" && "$go_cmd" list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' "$2"); }

kube_version="$(modver hack/kube k8s.io/kubernetes)"
kube_date="$(modtime hack/kube k8s.io/kubernetes)"
etcd_version="$(modver hack/etcd go.etcd.io/etcd/server/v3)"
ms_version="$(modver hack/metrics-server sigs.k8s.io/metrics-server)"
ms_date="$(modtime hack/metrics-server sigs.k8s.io/metrics-server)"
[[ "$kube_version" =~ ^v([0-9]+)\.([0-9]+)\. ]] || die "unexpected k8s.io/kubernetes version '$kube_version'"
kube_major="${BASH_REMATCH[1]}" kube_minor="${BASH_REMATCH[2]}"

# Same variables Kubernetes' hack/lib/version.sh sets. Built from the published module (a
# source archive), so the tree state is "archive" and there is no git commit to report.
version_x() {  # $1 = package holding the version variables
  printf -- "-X '%s.%s=%s' " \
    "$1" gitVersion "$2" "$1" gitMajor "$3" "$1" gitMinor "$4" \
    "$1" gitTreeState archive "$1" gitCommit "" "$1" buildDate "$5"
}
kube_ldflags="-s -w $(version_x k8s.io/component-base/version "$kube_version" "$kube_major" "$kube_minor" "$kube_date")"
kube_ldflags+=" $(version_x k8s.io/client-go/pkg/version "$kube_version" "$kube_major" "$kube_minor" "$kube_date")"
[[ "$ms_version" =~ ^v([0-9]+)\.([0-9]+)\. ]] || die "unexpected metrics-server version '$ms_version'"
ms_ldflags="-s -w $(version_x k8s.io/client-go/pkg/version "$ms_version" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "$ms_date")"
etcd_ldflags="-s -w"

start=$SECONDS
elapsed() { local s=$((SECONDS - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

# go build -v names each package as it is compiled (cache hits are silent): a heartbeat with
# that count every minute, against the packages in the build, shows a cold build is moving
# without flooding the log.
build() {  # $1 = module dir, $2 = what, $3 = ldflags, $4 = package, rest = go build arguments
  local dir="$1" what="$2" ldflags="$3" package="$4"; shift 4
  local t0=$SECONDS vlog="$tmp/build-${dir//\//_}.log" total
  total="$(cd "$dir" && "$go_cmd" list -deps "$package" | wc -l)"
  log "building $what from $dir ($total packages, go build -p $jobs)"
  : >"$vlog"
  ( while sleep 60; do
      log "  $what: $(wc -l <"$vlog") of $total packages compiled, $(elapsed "$t0")"
    done ) &
  ticker=$!
  if ! (cd "$dir" && "$go_cmd" build -v -trimpath -p "$jobs" -ldflags "$ldflags" "$@" \
        "$package" 2>"$vlog"); then
    kill "$ticker" 2>/dev/null || true; ticker=""
    grep -v '^[a-zA-Z0-9_./~-]*$' "$vlog" >&2 || cat "$vlog" >&2
    die "go build in $dir failed"
  fi
  kill "$ticker" 2>/dev/null || true; wait "$ticker" 2>/dev/null || true; ticker=""
  log "  $what: done in $(elapsed "$t0") ($(wc -l <"$vlog") of $total packages compiled)"
}

log "cache key $key: Kubernetes $kube_version, etcd $etcd_version, metrics-server $ms_version, $go_version"
log "downloading modules ($GOPROXY)"
for m in "${modules[@]}"; do (cd "$m" && "$go_cmd" mod download) || die "go mod download in $m failed"; done
# One invocation for all Kubernetes binaries: they share most packages, compiled once.
build hack/kube "kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubectl" \
  "$kube_ldflags" tool -o "$tmp/bin/"
build hack/etcd "etcd" "$etcd_ldflags" go.etcd.io/etcd/server/v3 -o "$tmp/bin/etcd"
build hack/metrics-server "metrics-server" "$ms_ldflags" tool -o "$tmp/bin/"

for b in "${bins[@]}"; do [[ -x "$tmp/bin/$b" ]] || die "the build made no $b"; done
"$tmp/bin/kube-apiserver" --version | grep -qx "Kubernetes $kube_version" \
  || die "kube-apiserver --version says '$("$tmp/bin/kube-apiserver" --version)', want $kube_version"
cat >"$tmp/bin/versions.txt" <<EOF
kubernetes $kube_version
etcd $etcd_version
metrics-server $ms_version
go $go_version
EOF
rm -f "$tmp"/build-*.log
touch "$tmp/bin/.complete"
# rename(2) makes the result appear whole or not at all; a leftover incomplete $dest (from
# a run killed before this script existed) is replaced.
[[ ! -e "$dest" ]] || rm -rf "$dest"
chmod 755 "$tmp"
mv -T "$tmp" "$dest"
log "built in $(elapsed "$start"): $dest/bin"
echo "$dest/bin"
