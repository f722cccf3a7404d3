"""Dual-stack listeners (issue 13 item 7): what the operator and the store pods bind on `::`
answers over IPv4 and IPv6 alike, so IPv4-only, IPv6-only and dual-stack clusters can probe
them and reach the webhook. Run inside a fresh network namespace (`unshare --net`), since a
wildcard address would otherwise bind every interface of the shared test host."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mailwarden_operator.main import webhook_bind_address

REPO = Path(__file__).resolve().parents[2]


def in_new_netns(script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to test wildcard listeners in isolation")
    return subprocess.run(
        ["unshare", "--net", "--", "sh", "-c",
         f"ip link set lo up && exec {sys.executable} -c \"$0\"", textwrap.dedent(script)],
        capture_output=True, text=True, timeout=timeout, cwd=REPO)


CONNECT = """
import socket, time
def reachable(host, port):
    for _ in range(100):
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False
"""


def test_the_operators_endpoints_answer_ipv4_and_ipv6() -> None:
    done = in_new_netns(CONNECT + """
import urllib.request
from mailwarden_operator.common.httpserve import HttpEndpoints, checks_route
server = HttpEndpoints("::", 0, {"/readyz": checks_route({})})
for url in (f"http://127.0.0.1:{server.port}/readyz", f"http://[::1]:{server.port}/readyz"):
    with urllib.request.urlopen(url, timeout=5) as rsp:
        assert rsp.status == 200, url
print("both")
""")
    assert done.returncode == 0 and "both" in done.stdout, done.stdout + done.stderr


def test_kopf_binds_the_webhook_on_every_interface_of_both_families() -> None:
    # aiohttp binds `None` on all interfaces, IPv4 and IPv6; an explicit `::` would be IPv6
    # only there (asyncio sets IPV6_V6ONLY).
    assert webhook_bind_address("::") is None
    assert webhook_bind_address("0.0.0.0") == "0.0.0.0"
    assert webhook_bind_address("10.0.0.5") == "10.0.0.5"


def test_the_store_server_answers_ipv4_and_ipv6_on_its_rendered_addresses(
        tmp_path: Path) -> None:
    from mailwarden_operator.common.render import RenderSettings
    from mailwarden_operator.unsubscribestore.render.deployment import render_store_deployment
    from mailwarden_operator.unsubscribestore.spec import with_defaults
    owner = {"metadata": {"name": "sup", "namespace": "ns", "uid": "u"},
             "spec": with_defaults({"storage": {"type": "embedded"},
                                    "replicas": {"min": 1, "max": 1},
                                    "oneClick": {"enabled": False}})}
    args = render_store_deployment(owner, RenderSettings(), {})["spec"]["template"]["spec"][
        "containers"][0]["args"]
    addresses = [args[i + 1] for i, a in enumerate(args) if a.endswith("-address")]
    assert addresses == ["[::]:50061", "[::]:8080", "[::]:9091"]
    argv = [str(Path(sys.executable).parent / "mailwarden"), "unsubscribe-server",
            "--store", "sqlite", "--sqlite-path", str(tmp_path / "db.sqlite"),
            "--grpc-address", addresses[0], "--http-address", addresses[1],
            "--metrics-address", addresses[2], "--no-one-click"]
    done = in_new_netns(CONNECT + f"""
import subprocess
server = subprocess.Popen({argv!r})
try:
    for port in (50061, 8080, 9091):
        for host in ("127.0.0.1", "::1"):
            assert reachable(host, port), (host, port)
    print("all")
finally:
    server.terminate()
    server.wait(30)
""", timeout=90)
    assert done.returncode == 0 and "all" in done.stdout, done.stdout + done.stderr
