"""The protocol ports live and die with the server: shared by worker processes, refused
as temporary before a policy loads, served through the SIGTERM drain, closed after it
with connections in flight given the grace period; clear errors for bad flags."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import pytest

from testkit.filter import Server, wait_for, write_policy
from testkit.processes import free_port, mailwarden_argv
from testkit.protocols import (
    HAM,
    TAGGED,
    MilterClient,
    connect,
    protocol_policy,
    read_all,
    start_server,
)


def spamd_check(port: int, raw: bytes = HAM) -> bytes:
    sock = connect(port)
    sock.sendall(b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(raw) + raw)
    sock.shutdown(socket.SHUT_WR)
    return read_all(sock)


def test_workers_share_the_protocol_ports_and_their_metrics(tmp_path):
    server = start_server(tmp_path, workers=2)
    try:
        for _ in range(20):
            assert spamd_check(server.ports["spamd_port"]).startswith(b"SPAMD/1.5 0 EX_OK")
        client = MilterClient(server.ports["milter_port"])
        assert client.message(TAGGED)[-1] == (b"c", b"")
        client.close()
        assert server.metric("mailwarden_filter_requests_total", method="spamd",
                             code="OK") == 20
        assert server.metric("mailwarden_filter_requests_total", method="milter",
                             code="OK") == 1
        assert server.metric("mailwarden_filter_protocol_connections_total",
                             protocol="spamd") == 20
        def listening() -> set[str]:
            return {line.split('"pid": ')[1].split(",")[0]
                    for line in server.log().splitlines() if '"message": "listening"' in line}

        # both workers listen on the protocol ports (the second may still be starting)
        wait_for(lambda: len(listening()) == 2, 30, "both workers to listen")
    finally:
        server.kill()


def test_before_the_policy_loads_every_protocol_says_try_later(tmp_path):
    policy_dir = tmp_path / "policy"
    write_policy(policy_dir, "thresholds: [not, a, mapping]\n")
    server = Server(tmp_path, policy_dir, ["--milter-port", "0", "--spamd-port", "0",
                                           "--rspamd-port", "0", "--policy-wait-seconds",
                                           "60"], 1)
    try:
        server.wait_listening()
        assert spamd_check(server.ports["spamd_port"]).startswith(
            b"SPAMD/1.5 75 EX_TEMPFAIL mail filter: no policy loaded yet")
        sock = connect(server.ports["rspamd_port"])
        sock.sendall(b"POST /checkv2 HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(HAM) + HAM)
        assert read_all(sock).startswith(b"HTTP/1.1 503")
        client = MilterClient(server.ports["milter_port"])
        assert client.message(HAM) == [(b"y", b"451 4.7.1 mail filter: no policy loaded yet; "
                                              b"retry on another replica\0")]
        client.close()
    finally:
        server.kill()


def test_sigterm_drains_then_closes_with_grace_for_calls_in_flight(tmp_path):
    server = start_server(tmp_path, "--drain-seconds", "2", "--grace-seconds", "10")
    port = server.ports["spamd_port"]
    try:
        in_flight = connect(port, timeout=20)
        in_flight.sendall(b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(HAM)
                          + HAM[:20])
        server.signal(signal.SIGTERM)
        time.sleep(0.3)
        assert spamd_check(port).startswith(b"SPAMD/1.5 0 EX_OK")  # draining: still served
        wait_for(lambda: _refused(port), 10, "the listener to close after the drain")
        in_flight.sendall(HAM[20:])  # finished within the grace period: answered
        in_flight.shutdown(socket.SHUT_WR)
        assert read_all(in_flight).startswith(b"SPAMD/1.5 0 EX_OK")
        assert server.wait_exit(30) == 0
    finally:
        server.kill()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def _serve(tmp_path, *args: str) -> subprocess.CompletedProcess:
    write_policy(tmp_path / "p", protocol_policy())
    return subprocess.run(mailwarden_argv("serve", "--policy-dir", str(tmp_path / "p"),
                                          "--host", "127.0.0.1", "--workers", "1", *args),
                          capture_output=True, text=True, timeout=60)


def test_bad_protocol_flags_are_one_clear_line(tmp_path):
    grpc = free_port()
    done = _serve(tmp_path, "--grpc-port", str(grpc), "--spamd-port", str(grpc))
    assert done.returncode == 2
    assert f"--spamd-port and --grpc-port must differ (both {grpc})" in done.stderr
    done = _serve(tmp_path, "--milter-port", "70000", "--protocol-idle-seconds", "0")
    assert done.returncode == 2
    assert "--milter-port must be between 0 and 65535 (got 70000)" in done.stderr
    assert "--protocol-idle-seconds must be positive" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_protocol_port_in_use_is_a_clear_error(tmp_path, workers):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        done = _serve(tmp_path, "--grpc-port", "0", "--metrics-port", "0", "--workers",
                      workers, "--rspamd-port", str(port))
    finally:
        taken.close()
    assert done.returncode == 2, done.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_restart_takes_its_port_back_at_once(tmp_path):
    """The server closes connections itself (spamd after each answer, everything at
    shutdown), which leaves the port's connections in TIME_WAIT or FIN_WAIT2 for a while;
    the next server on the same port must still start."""
    port = free_port()
    first = start_server(tmp_path, "--spamd-port", str(port), "--grace-seconds", "1")
    held = []
    try:
        for _ in range(3):  # the server hangs up first (as for Exim): TIME_WAIT is ours
            sock = connect(port)
            sock.sendall(b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(HAM) + HAM)
            assert read_all(sock).startswith(b"SPAMD/1.5 0 EX_OK")
            sock.close()
        # and a peer that never hangs up (an MTA's idle connection): the stopping server
        # closes it, and the port keeps a connection in FIN_WAIT2 as long as the peer lives
        held.append(connect(port))
        held[0].sendall(b"CHECK SPAMC/1.5\r\n")
    finally:
        first.signal(signal.SIGTERM)
        first.wait_exit(30)
    second = start_server(tmp_path, "--spamd-port", str(port))
    try:
        assert spamd_check(port).startswith(b"SPAMD/1.5 0 EX_OK")
    finally:
        second.kill()
        for sock in held:
            sock.close()
