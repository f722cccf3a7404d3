#!/usr/bin/env bash
# The README's first command: set everything up on a fresh clone (scripts/bootstrap.sh:
# Debian packages, .venv, the SpamAssassin corpus), then run local mode: 3 filter replicas
# on 127.0.0.1 with the example SpamPolicy, spam and ham classified through the balancing
# client. Ctrl-C stops it. Extra arguments go to `mailwarden local` (e.g. --once).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
exec .venv/bin/mailwarden local "$@"
