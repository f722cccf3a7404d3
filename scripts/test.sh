#!/usr/bin/env bash
# The README's test command: set everything up (scripts/bootstrap.sh), then run the suite.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/filter_server -x
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
export PATH="$root/.cache/bin:$PATH"
# pytest exits 5 when it collected no tests; that must fail the run, and it does: any
# non-zero status is passed through.
exec .venv/bin/python -m pytest "$@"
