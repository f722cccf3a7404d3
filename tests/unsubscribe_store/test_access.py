"""Who may call what on the store's gRPC port (issue 20 item 8), against real server
processes: anyone who reached the port exported 300 k addresses and imported 300 k global
suppressions. Import, Export and Resubscribe are for named clients only; Check, Watch and
Unsubscribe stay open to what the transport admits; with TLS and client certificates
required, a plaintext or certificate-less caller gets nothing at all."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import pytest

from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc
from testkit.store import RESUBSCRIBE_TOKEN, count_rows
from tests.filter_server.server.certs import Cert, make_ca, make_cert

BEARER = (("authorization", f"Bearer {RESUBSCRIBE_TOKEN}"),)
IMPORT = [pb.ImportChunk(format=pb.CSV, default_scope="*",
                         data=b"address,scope\nvictim@example.com,*\n")]


def _code(call) -> grpc.StatusCode | None:
    try:
        result = call()
        if not hasattr(result, "ListFields"):  # a stream: read it to the end
            list(result)
    except grpc.RpcError as exc:
        return exc.code()
    return None


@pytest.fixture
def sqlite_args(tmp_path) -> list[str]:
    return ["--store", "sqlite", "--sqlite-path", str(tmp_path / "store.db")]


def test_admin_methods_need_the_credential(start_store, sqlite_args):
    store = start_store(sqlite_args)
    stub = store.stub()
    stub.Unsubscribe(pb.UnsubscribeRequest(address="a@example.com", scope="news",
                                           reason=pb.UNSUBSCRIBE, source="test"))
    assert stub.Check(pb.CheckRequest(addresses=["a@example.com"], scope="news")) \
        .suppressed[0].matched
    export = pb.ExportRequest(format=pb.CSV)
    denied = _code(lambda: stub.Export(export))
    assert denied == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: stub.Import(iter(IMPORT))) == grpc.StatusCode.UNAUTHENTICATED
    wrong = (("authorization", "Bearer not-the-credential"),)
    assert _code(lambda: stub.Export(export, metadata=wrong)) == grpc.StatusCode.UNAUTHENTICATED
    assert count_rows("sqlite", sqlite_args, "unsubscribe_changes") == 1
    data = b"".join(c.data for c in stub.Export(export, metadata=BEARER))
    assert b"a@example.com" in data
    assert stub.Import(iter(IMPORT), metadata=BEARER).inserted == 1
    assert "authorization" not in store.log().lower().replace("'authorization: bearer", "")


def test_without_an_admin_credential_admin_methods_are_disabled(tmp_path, signing_keys,
                                                                sqlite_args):
    from testkit.store import StoreProcess
    proc = StoreProcess(tmp_path, sqlite_args,
                        extra_args=["--signing-key-dir", str(signing_keys[0])])
    try:
        proc.start()
        code = _code(lambda: proc.stub().Export(pb.ExportRequest(format=pb.CSV),
                                                metadata=BEARER))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        proc.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Cert]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "ca")
    return {"ca": ca,
            "server": make_cert(directory, "store", ca, server=True),
            "filter": make_cert(directory, "filter-pod", ca, server=False),
            "admin": make_cert(directory, "migration-tool", ca, server=False),
            "stranger": make_cert(directory, "stranger",
                                  make_ca(directory / "other", "other-ca"), server=False)}


def _tls_dir(path: Path, ca: Cert, cert: Cert | None) -> Path:
    path.mkdir()
    shutil.copy(ca.crt, path / "ca.crt")
    if cert is not None:
        shutil.copy(cert.crt, path / "tls.crt")
        shutil.copy(cert.key, path / "tls.key")
    return path


def _stub(target: str, ca: Cert, cert: Cert | None) -> tuple[grpc.Channel, object]:
    creds = grpc.ssl_channel_credentials(ca.crt.read_bytes(),
                                         *(reversed(cert.pem()) if cert else ()))
    channel = grpc.secure_channel(target, creds,
                                  options=[("grpc.ssl_target_name_override", "localhost")])
    return channel, pb_grpc.UnsubscribeStoreStub(channel)


def _until_ready(call, timeout: float = 60.0) -> None:
    """Retry `call` while the store answers UNAVAILABLE (its database still opening)."""
    deadline = time.monotonic() + timeout
    while (code := _code(call)) == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
        time.sleep(0.2)
    assert code is None


def test_mutual_tls_and_named_admin_clients(start_store, sqlite_args, tmp_path, pki):
    server_dir = _tls_dir(tmp_path / "server-tls", pki["ca"], pki["server"])
    store = start_store(sqlite_args, extra_args=[
        "--tls-dir", str(server_dir), "--require-client-cert",
        "--admin-client", "migration-tool"], wait_serving=False)
    store.wait_ports(60)
    check = pb.CheckRequest(addresses=["a@example.com"], scope="news")
    export = pb.ExportRequest(format=pb.CSV)

    plain = grpc.insecure_channel(store.target)
    assert _code(lambda: pb_grpc.UnsubscribeStoreStub(plain).Check(check, timeout=5)) \
        == grpc.StatusCode.UNAVAILABLE
    plain.close()
    for who in (None, "stranger"):  # no client certificate, or one of another CA
        channel, stub = _stub(store.target, pki["ca"], pki[who] if who else None)
        assert _code(lambda: stub.Check(check, timeout=5)) == grpc.StatusCode.UNAVAILABLE
        channel.close()

    channel, filter_stub = _stub(store.target, pki["ca"], pki["filter"])
    _until_ready(lambda: filter_stub.Check(check, timeout=5))
    assert _code(lambda: filter_stub.Export(export)) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: filter_stub.Import(iter(IMPORT))) == grpc.StatusCode.PERMISSION_DENIED
    channel.close()
    assert count_rows("sqlite", sqlite_args, "unsubscribe_changes") == 0

    channel, admin_stub = _stub(store.target, pki["ca"], pki["admin"])
    assert admin_stub.Import(iter(IMPORT)).inserted == 1
    assert b"victim@example.com" in b"".join(c.data for c in admin_stub.Export(export))
    channel.close()


def test_the_cli_speaks_tls(start_store, sqlite_args, tmp_path, pki):
    from tests.unsubscribe_store.test_cli import mw
    server_dir = _tls_dir(tmp_path / "server-tls", pki["ca"], pki["server"])
    store = start_store(sqlite_args, extra_args=[
        "--tls-dir", str(server_dir), "--require-client-cert",
        "--admin-client", "migration-tool"], wait_serving=False)
    store.wait_ports(60)
    admin_dir = _tls_dir(tmp_path / "admin-tls", pki["ca"], pki["admin"])
    filter_dir = _tls_dir(tmp_path / "filter-tls", pki["ca"], pki["filter"])
    target = f"localhost:{store.grpc_port}"
    channel, admin_stub = _stub(store.target, pki["ca"], pki["admin"])
    _until_ready(lambda: admin_stub.Check(pb.CheckRequest(addresses=["x@example.com"]),
                                          timeout=5))
    channel.close()
    added = mw("unsubscribe", "--target", target, "--tls-dir", str(filter_dir), "add",
               "cli@example.com", "--scope", "news")
    assert added.returncode == 0, added.stderr
    denied = mw("unsubscribe", "--target", target, "--tls-dir", str(filter_dir), "export")
    assert denied.returncode == 1 and b"PERMISSION_DENIED" in denied.stderr
    exported = mw("unsubscribe", "--target", target, "--tls-dir", str(admin_dir), "export")
    assert exported.returncode == 0 and b"cli@example.com" in exported.stdout
    broken = mw("unsubscribe", "--target", target, "--tls-dir", str(tmp_path / "nope"),
                "status")
    assert broken.returncode == 2 and b"Traceback" not in broken.stderr


def test_malformed_protobuf_is_invalid_argument(start_store, sqlite_args):
    """Issue 20 item 16: bytes that are not the request message got INTERNAL (a server
    fault, which clients retry and alerts count) instead of INVALID_ARGUMENT."""
    store = start_store(sqlite_args)
    channel = grpc.insecure_channel(store.target)
    service = "/mailwarden.unsubscribe.v1.UnsubscribeStore/"
    garbage = b"\xff\xff\xff\xff"  # a field header with a truncated varint
    check = channel.unary_unary(service + "Check")
    with pytest.raises(grpc.RpcError) as info:
        check(garbage, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid CheckRequest" in info.value.details()
    import_ = channel.stream_unary(service + "Import")
    with pytest.raises(grpc.RpcError) as info:
        import_(iter([garbage]), timeout=10, metadata=BEARER)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    watch = channel.unary_stream(service + "Watch")
    with pytest.raises(grpc.RpcError) as info:
        list(watch(garbage, timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # well-formed calls on the same channel still work
    ok = pb_grpc.UnsubscribeStoreStub(channel).Check(pb.CheckRequest(addresses=["a@b.example"]))
    assert not ok.suppressed
    channel.close()


def test_long_invalid_input_is_not_echoed(start_store, sqlite_args):
    """Issue 20 item 16: long invalid addresses were echoed whole into status details."""
    store = start_store(sqlite_args)
    stub = store.stub()
    for request in (pb.UnsubscribeRequest(address="<" * 1_000_000, scope="news"),
                    pb.UnsubscribeRequest(address="a" * 500_000 + "@example.com", scope="n"),
                    pb.UnsubscribeRequest(address="a@example.com", scope="n",
                                          source="s" * 1_000_000)):
        with pytest.raises(grpc.RpcError) as info:
            stub.Unsubscribe(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(info.value.details()) < 400
    assert len(store.log()) < 20_000
