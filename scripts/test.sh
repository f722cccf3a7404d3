#!/usr/bin/env bash
# The README's test command: set everything up (scripts/bootstrap.sh), then run the suite:
# tests/ and then e2e/, the end-to-end suite, which brings a real Kubernetes control plane
# with process nodes up, installs the chart, runs, and tears it all down (docs/e2e.md;
# pyproject.toml's testpaths). Extra arguments go to pytest and replace those paths, e.g.
#   scripts/test.sh tests/filter_server -x       scripts/test.sh e2e -k rollout
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
export PATH="$root/.cache/bin:$PATH"
# pytest exits 5 when it collected no tests; that must fail the run, and it does: any
# non-zero status is passed through.
exec .venv/bin/python -m pytest "$@"
