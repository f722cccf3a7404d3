#!/usr/bin/env bash
# The side-by-side benchmark: Mailwarden vs SpamAssassin (spamd) vs Rspamd, one run.
#   scripts/bench.sh [options for benchmarks.run]      e.g. --duration 5, --systems rspamd
#   scripts/bench.sh --protocols [options]             benchmarks.protocols: each mail-server
#       protocol against gRPC, and end to end through Postfix (docs/benchmarks/protocols.md)
# Installs what is missing (Debian packages spamassassin spamd spamc rspamd redis-server,
# .venv, the corpus; matplotlib and py-spy from the `bench` extra), then runs
# `.venv/bin/python -m benchmarks.run`, which writes docs/benchmarks/results.md,
# results.json and throughput_vs_p99.png. See docs/benchmarks.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh --bench
if ! .venv/bin/python -c 'import matplotlib' 2>/dev/null || [[ ! -x .venv/bin/py-spy ]]; then
  echo "[bench] installing the bench extra (matplotlib, py-spy) into .venv" >&2
  .venv/bin/pip install -q -e '.[dev,bench]'
fi
export MAILWARDEN_BENCH_COMMAND="scripts/bench.sh"
if [[ "${1:-}" == "--protocols" ]]; then
  shift
  exec .venv/bin/python -m benchmarks.protocols "$@"
fi
exec .venv/bin/python -m benchmarks.run "$@"
