"""The committed generated gRPC code must match protos/ (regenerate: scripts/gen-protos.sh)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_matches_protos(tmp_path):
    subprocess.run(["bash", str(REPO / "scripts" / "gen-protos.sh"), str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "gen-protos.sh produced nothing"
    stale = [str(p) for p in generated
             if (tmp_path / p).read_bytes() != (REPO / p).read_bytes()]
    assert stale == [], f"regenerate with scripts/gen-protos.sh: {stale}"
