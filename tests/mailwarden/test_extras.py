"""`pip install mailwarden` (no extras) gives the client and the client commands; a command
that needs an extra says which `pip install` it needs instead of a traceback.

The install without extras is imitated in a fresh interpreter whose import system refuses
every library that only the extras bring (what a virtualenv without them would do)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Top-level modules of the extras' distributions (and what they pull in).
EXTRA_MODULES = ("kopf", "kubernetes", "psycopg", "psycopg_pool", "aiohttp", "hyperscan",
                 "jsonschema", "yaml", "prometheus_client", "pythonjsonlogger", "grpc_health",
                 "grpc_reflection", "numpy")
WITHOUT_EXTRAS = f"""
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRA_MODULES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
"""


def _without_extras(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS + code], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _names(requirements: list[str]) -> set[str]:
    return {r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
            .lower() for r in requirements}


def test_the_base_install_is_the_client_only() -> None:
    # idna: the contract's address normalisation (UTS #46 / IDNA2008); cryptography: the
    # AES-SIV of one-click tokens, which senders mint with the contract's header helper
    assert _names(PYPROJECT["project"]["dependencies"]) == {"grpcio", "protobuf", "idna",
                                                            "cryptography"}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"server", "store", "operator", "all", "dev"} <= set(extras)
    assert extras["all"] == ["mailwarden[server,store,operator]"]
    assert "mailwarden[all]" in extras["dev"]
    assert {"kopf", "kubernetes"} <= _names(extras["operator"])
    assert {"psycopg", "aiohttp"} <= _names(extras["store"])
    assert {"hyperscan", "jsonschema", "pyyaml"} <= _names(extras["server"])


def test_the_contract_and_the_client_commands_work_without_extras() -> None:
    result = _without_extras("""
import mailwarden.addresses, mailwarden.client, mailwarden.suppression, mailwarden.tokens
import mailwarden.unsubscribe_headers, mailwarden.wire
from mailwarden.cli import main
keys = mailwarden.tokens.KeyRing.from_secrets(mailwarden.tokens.generate_key())
print(mailwarden.unsubscribe_headers.list_unsubscribe_headers(
    "Ann@Example.com", "news", keys=keys, base_url="https://u.example")["List-Unsubscribe-Post"])
assert main(["token", "generate-key"]) == 0
for command in (["--help"], ["classify", "--help"], ["unsubscribe", "--help"]):
    try:
        main(command)
    except SystemExit as exc:
        assert exc.code == 0, (command, exc.code)
""")
    assert result.returncode == 0, result.stderr
    assert "List-Unsubscribe=One-Click" in result.stdout
    assert "usage: mailwarden" in result.stdout


def test_a_command_without_its_extra_says_which_to_install() -> None:
    for command, extra in ((["serve", "--policy-dir", "/nonexistent"], "server"),
                           (["policy", "validate", "examples/spampolicy.yaml"], "server"),
                           (["unsubscribe-server", "--migrate-only"], "store"),
                           (["operator"], "operator")):
        result = _without_extras(f"""
import sys
from mailwarden.cli import main
sys.exit(main({command!r}))
""")
        assert result.returncode == 2, (command, result.stderr)
        assert f"pip install 'mailwarden[{extra}]'" in result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
