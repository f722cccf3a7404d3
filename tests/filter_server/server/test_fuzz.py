"""Hypothesis fuzzing of what the server runs per request: parse_message and
CompiledPolicy.classify, in process. Whatever bytes arrive, a verdict comes back and no
exception escapes (the server would turn one into INTERNAL).
MAILWARDEN_FUZZ_EXAMPLES=5000 runs a longer search (default 300 examples per test)."""

from __future__ import annotations

import base64
import math
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filter_server.bayes.model import BayesModel
from filter_server.engine.compiled import ACTIONS, CompiledPolicy, Envelope
from filter_server.message import parse_message
from filter_server.policy.loader import load_policy_dir
from testkit.filter import mini_policy

FUZZ_SETTINGS = settings(max_examples=int(os.environ.get("MAILWARDEN_FUZZ_EXAMPLES", "300")), deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> CompiledPolicy:
    directory: Path = tmp_path_factory.mktemp("fuzz-policy")
    policy = mini_policy(1)
    policy["lists"]["allow"] = {"senders": ["boss@example.com"], "uriHosts": ["ok.example"],
                                "matchUnauthenticated": True}
    policy["signatures"] = {"digests": ["sha256:" + "0" * 64]}
    policy["rules"].append({"name": "ALL_HEADERS", "target": "header", "header": "ALL",
                            "pattern": r"(?i)x-spam", "score": 1})
    policy["model"] = {"file": "model.json.gz", "weight": 3}
    model = BayesModel(10, 10, {"subject:viagra": (9, 0), "lunch": (0, 9), "free": (7, 2)})
    (directory / "policy.yaml").write_text(yaml.safe_dump(policy))
    (directory / "model.json.gz").write_bytes(model.to_bytes())
    return CompiledPolicy(load_policy_dir(directory))


def check(compiled: CompiledPolicy, raw: bytes, envelope: Envelope = Envelope()) -> None:
    verdict = compiled.classify(raw, envelope)
    assert verdict.action in ACTIONS
    assert math.isfinite(verdict.score)
    assert 0.0 <= verdict.spam_probability <= 1.0
    assert verdict.policy_hash == compiled.hash


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
header_names = st.sampled_from(["Subject", "From", "To", "Content-Type", "Received",
                                "Content-Transfer-Encoding", "X-Spam", "List-Id", "MIME-Version",
                                "Content-Disposition", "Message-ID", "X:Odd", ""])
content_types = st.sampled_from([
    "text/plain", "text/html", "text/plain; charset=bogus", "text/html; charset=utf-16",
    "multipart/mixed", "multipart/alternative; boundary=b", "multipart/mixed; boundary=\"\"",
    "application/octet-stream", "message/rfc822", "text/plain; charset=\"iso-8859-1\""])
encodings = st.sampled_from(["7bit", "base64", "quoted-printable", "8bit", "x-unknown"])


@st.composite
def mime_messages(draw: st.DrawFn) -> bytes:
    """Messages shaped like mail, with the usual ways mail is broken mixed in."""
    headers = draw(st.lists(st.tuples(header_names, texts), max_size=8))
    lines = [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Type: {draw(content_types)}")
    lines.append(f"Content-Transfer-Encoding: {draw(encodings)}")
    if draw(st.booleans()):
        lines.append(f"Subject: =?{draw(st.sampled_from(['utf-8', 'x-bad', '']))}?"
                     f"{draw(st.sampled_from(['B', 'Q', 'Z']))}?{draw(texts)}?=")
    body_parts = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 4))
        text = draw(texts)
        if kind == 0:
            body_parts.append(f"--b\r\nContent-Type: {draw(content_types)}\r\n\r\n{text}")
        elif kind == 1:
            body_parts.append(base64.b64encode(text.encode())[: draw(st.integers(0, 80))]
                              .decode() + draw(st.sampled_from(["", "=", "!!", "\x00"])))
        elif kind == 2:
            body_parts.append(f"<html><a href=\"{text}\">{text}</a><script>{text}")
        elif kind == 3:
            body_parts.append("--b--" if draw(st.booleans()) else "--b")
        else:
            body_parts.append(f"http://{text}/ www.{text}.com")
    separator = draw(st.sampled_from(["\r\n\r\n", "\n\n", "\r\n", ""]))
    raw = "\r\n".join(lines) + separator + "\r\n".join(body_parts)
    return raw.encode("utf-8", "surrogatepass") + draw(st.binary(max_size=40))


@FUZZ_SETTINGS
@given(raw=st.binary(max_size=4096))
def test_arbitrary_bytes(compiled: CompiledPolicy, raw: bytes) -> None:
    parse_message(raw)
    check(compiled, raw)


@FUZZ_SETTINGS
@given(raw=mime_messages(), mail_from=texts, recipients=st.lists(texts, max_size=3))
def test_mime_shaped_messages(compiled: CompiledPolicy, raw: bytes, mail_from: str,
                              recipients: list[str]) -> None:
    parsed = parse_message(raw)
    assert isinstance(parsed.body_text, str)
    check(compiled, raw, Envelope(mail_from=mail_from, recipients=tuple(recipients)))
