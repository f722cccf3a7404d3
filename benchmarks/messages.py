"""The messages every system sees: the test split of the SpamAssassin public corpus.

The split is `mailwarden_local.corpus.split_corpus` (test = int(sha256("<group>/<file>")[:8], 16)
% 5 == 0, ~20%); the train split is used only for training and for mining generated rules.
Each message is sent as its raw bytes, with the same SMTP envelope to every system that
takes one: MAIL FROM = the Return-Path address (else the From address), RCPT TO = the
Delivered-To address (else the first To address). No client IP or HELO is passed to
anyone: there is no MTA in front, and reverse-DNS-dependent checks could not run anyway.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr
from pathlib import Path

from mailwarden_local.corpus import Split, split_corpus

_ADDRESS = re.compile(r"^[^@\s<>\"]+@[A-Za-z0-9.-]+$")


@dataclass(frozen=True)
class Message:
    name: str          # "<group>.<file>" as laid out by split_corpus
    label: str         # "ham" or "spam"
    raw: bytes
    mail_from: str
    rcpt: str

    @property
    def is_spam(self) -> bool:
        return self.label == "spam"


def _clean(address: str) -> str:
    address = address.strip().strip("<>").strip()
    return address if _ADDRESS.match(address) else ""


def envelope_of(raw: bytes) -> tuple[str, str]:
    """(mail_from, rcpt) derived from the headers as documented in the module docstring."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw)

    def first(name: str) -> str:
        value = headers.get(name)
        return str(value) if value is not None else ""

    mail_from = _clean(parseaddr(first("Return-Path"))[1]) or \
        _clean(parseaddr(first("From"))[1])
    rcpt = _clean(parseaddr(first("Delivered-To"))[1])
    if not rcpt:
        for _, address in getaddresses([first("To")]):
            rcpt = _clean(address)
            if rcpt:
                break
    return mail_from, rcpt


def load(split: Split, part: str, *, limit: int | None = None) -> list[Message]:
    """The messages of one part ("test" or "train"), ham and spam interleaved in a fixed
    pseudo-random order (so any prefix, e.g. a smoke run's, holds both labels)."""
    out = []
    for label in ("ham", "spam"):
        for path in split.files(part, label):
            raw = path.read_bytes()
            mail_from, rcpt = envelope_of(raw)
            out.append(Message(path.name, label, raw, mail_from, rcpt))
    out.sort(key=lambda m: hashlib.sha256(m.name.encode()).digest())
    return out[:limit] if limit else out


def prepare_split(corpus: Path, out: Path) -> Split:
    return split_corpus(corpus, out)
