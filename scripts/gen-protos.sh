#!/usr/bin/env bash
# Regenerate the committed protobuf/gRPC code under mailwarden/ from protos/.
# Usage: scripts/gen-protos.sh [OUTDIR]   (default: the repository root)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root}"
py="${PYTHON:-$root/.venv/bin/python}"
cd "$root/protos"
mapfile -t files < <(find mailwarden -name '*.proto' | sort)
"$py" -m grpc_tools.protoc -I. --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "${files[@]}"
