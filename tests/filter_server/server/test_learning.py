"""Learning.Learn on a real server process: who may call it, which labels it refuses (the
filter's own verdicts), what it stores for the next training run, and its limits."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from filter_server.server.config import ServeConfig
from filter_server.server.learning import _already_known
from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
from testkit.filter import HAM, SPAM
from testkit.processes import mailwarden_argv

TOKEN = "learn-admin-credential"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def learn(server, message: bytes, label: int, origin: int = filter_pb2.USER_REPORT,
          metadata=AUTH) -> filter_pb2.LearnResponse:
    with grpc.insecure_channel(server.address) as channel:
        return filter_pb2_grpc.LearningStub(channel).Learn(
            filter_pb2.LearnRequest(request_id="r1", message=message, label=label,
                                    origin=origin), metadata=metadata, timeout=10)


def refused(server, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as failure:
        learn(server, *args, **kwargs)
    return failure.value


def test_learn_stores_labelled_mail_once_and_moves_it_on_a_new_label(
        servers, policy_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "learnt"
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    server = servers(policy_dir, "--learn-dir", str(folder), "--admin-token-file",
                     str(token_file), "--learn-max-per-hour", "2").wait_serving()
    spam_file = folder / "spam" / f"{hashlib.sha256(SPAM).hexdigest()}.eml"

    first = learn(server, SPAM, filter_pb2.LABEL_SPAM)
    assert first.outcome == filter_pb2.RECORDED and first.request_id == "r1"
    assert first.action == filter_pb2.QUARANTINE     # what the filter says of it now
    assert spam_file.read_bytes() == SPAM
    assert (first.spam_recorded, first.ham_recorded) == (1, 0)

    again = learn(server, SPAM, filter_pb2.LABEL_SPAM, filter_pb2.OPERATOR_REVIEW)
    assert again.outcome == filter_pb2.ALREADY_RECORDED and again.spam_recorded == 1

    moved = learn(server, SPAM, filter_pb2.LABEL_HAM)
    assert moved.outcome == filter_pb2.RELABELLED
    assert not spam_file.exists()
    assert (folder / "ham" / spam_file.name).read_bytes() == SPAM
    assert (moved.spam_recorded, moved.ham_recorded) == (0, 1)

    # --learn-max-per-hour 2: the moved message was stored within the hour, so one more
    # ham fits and the next is refused
    assert learn(server, HAM, filter_pb2.LABEL_HAM).outcome == filter_pb2.RECORDED
    error = refused(server, HAM + b"another\r\n", filter_pb2.LABEL_HAM)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--learn-max-per-hour" in error.details()
    assert len(list((folder / "ham").iterdir())) == 2


def test_learn_refuses_the_filters_own_verdicts_and_unauthenticated_callers(
        servers, policy_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "learnt"
    server = servers(policy_dir, "--learn-dir", str(folder),
                     env={"MAILWARDEN_ADMIN_TOKEN": TOKEN}).wait_serving()

    own = refused(server, SPAM, filter_pb2.LABEL_SPAM, filter_pb2.FILTER_VERDICT)
    assert own.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "own verdict" in own.details()
    unsaid = refused(server, SPAM, filter_pb2.LABEL_SPAM, filter_pb2.LABEL_ORIGIN_UNSPECIFIED)
    assert unsaid.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused(server, SPAM, filter_pb2.LABEL_UNSPECIFIED).code() == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert refused(server, b"", filter_pb2.LABEL_SPAM).code() == \
        grpc.StatusCode.INVALID_ARGUMENT

    assert refused(server, SPAM, filter_pb2.LABEL_SPAM, metadata=()).code() == \
        grpc.StatusCode.UNAUTHENTICATED
    wrong = (("authorization", "Bearer not-the-credential"),)
    assert refused(server, SPAM, filter_pb2.LABEL_SPAM, metadata=wrong).code() == \
        grpc.StatusCode.UNAUTHENTICATED
    assert not any((folder / "spam").iterdir()) and not any((folder / "ham").iterdir())
    assert TOKEN not in server.log()


def test_learn_is_disabled_without_an_admin_credential_or_a_folder(
        servers, policy_dir: Path, tmp_path: Path) -> None:
    no_token = servers(policy_dir, "--learn-dir", str(tmp_path / "learnt"),
                       env={"MAILWARDEN_ADMIN_TOKEN": ""}).wait_serving()
    error = refused(no_token, SPAM, filter_pb2.LABEL_SPAM)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no admin credential" in error.details()
    no_folder = servers(policy_dir, env={"MAILWARDEN_ADMIN_TOKEN": TOKEN}).wait_serving()
    error = refused(no_folder, SPAM, filter_pb2.LABEL_SPAM)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--learn-dir" in error.details()
    services = ProtoReflectionDescriptorDatabase(no_folder.channel()).get_services()
    assert "mailwarden.filter.v1.Learning" in services   # discoverable, like Filter


def test_a_sure_agreeing_model_makes_a_label_already_known() -> None:
    # Only mistakes and doubt are stored: repeating what the model is sure of would feed
    # its own beliefs back into it.
    assert _already_known(filter_pb2.LABEL_SPAM, "REJECT", 0.995)
    assert not _already_known(filter_pb2.LABEL_SPAM, "REJECT", 0.9)       # unsure model
    assert not _already_known(filter_pb2.LABEL_SPAM, "ACCEPT", 0.999)     # filter missed it
    assert _already_known(filter_pb2.LABEL_HAM, "ACCEPT", 0.001)
    assert not _already_known(filter_pb2.LABEL_HAM, "TAG", 0.001)         # a false positive
    assert not _already_known(filter_pb2.LABEL_HAM, "ACCEPT", -1.0)       # no model


def test_mailwarden_learn_command_records_files_and_reports_refusals(
        servers, policy_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "learnt"
    server = servers(policy_dir, "--learn-dir", str(folder),
                     env={"MAILWARDEN_ADMIN_TOKEN": TOKEN}).wait_serving()
    message = tmp_path / "junk.eml"
    message.write_bytes(SPAM)

    def cli(*args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
        return subprocess.run(mailwarden_argv("learn", "--target", server.address, *args),
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "MAILWARDEN_ADMIN_TOKEN": token})

    done = cli("--spam", str(message))
    assert done.returncode == 0, done.stderr
    assert "RECORDED" in done.stdout and "1 spam" in done.stdout
    assert (folder / "spam" / f"{hashlib.sha256(SPAM).hexdigest()}.eml").exists()
    denied = cli("--ham", str(message), token="wrong")
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
    assert "Traceback" not in denied.stderr
    missing = cli("--ham", str(tmp_path / "nope.eml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_serve_refuses_an_empty_or_unreadable_admin_token_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    problems = ServeConfig(policy_dir=tmp_path, admin_token_file=empty).problems()
    assert problems == [f"--admin-token-file: {empty} is empty"]
    missing = ServeConfig(policy_dir=tmp_path, admin_token_file=tmp_path / "nope").problems()
    assert len(missing) == 1 and "cannot read" in missing[0]
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    assert ServeConfig(policy_dir=tmp_path, learn_dir=not_dir).problems() == \
        [f"--learn-dir: {not_dir} is not a directory"]
