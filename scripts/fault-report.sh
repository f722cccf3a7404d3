#!/usr/bin/env bash
# The fault-injection report (docs/fault.md): set everything up (scripts/bootstrap.sh plus
# the `bench` extra for the plots), run the long version of every scenario, print the
# figures, and write docs/fault/report.md with docs/fault/timeline.png and surge.png.
# About 20 minutes on 2 cores. Extra arguments go to the report, e.g.
#   scripts/fault-report.sh --short              the CI versions (about 3 minutes)
#   scripts/fault-report.sh --only sigkill,rollout --out /tmp/fault
#   scripts/fault-report.sh --e2e                the HA scenarios on the real control plane
#                                                (rollout with operator takeover, drain,
#                                                node loss vanished and killed, rollout at
#                                                10 replicas, surge -> HPA scale-up and
#                                                scale-down, store failover under one-click
#                                                load; e2e/, long profile) ->
#                                                docs/fault/ha-report.md
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
if ! .venv/bin/python -c "import matplotlib" 2>/dev/null; then
  echo "[fault-report] installing the bench extra (matplotlib)" >&2
  .venv/bin/pip install -q -e '.[dev,bench]'
fi
if [[ "${1:-}" == "--e2e" ]]; then
  shift
  export PATH="$root/.cache/bin:$PATH"
  exec .venv/bin/python -m e2e.ha_report "$@"
fi
args=("$@")
has_profile=0
for arg in "${args[@]}"; do
  [[ "$arg" == "--short" || "$arg" == "--long" ]] && has_profile=1
done
((has_profile)) || args=(--long "${args[@]}")
export MAILWARDEN_FAULT_SCRIPT=1
exec .venv/bin/python -m tests.fault.report "${args[@]}"
