"""DKIM (RFC 6376) and ARC (RFC 8617) with dkimpy, split in two: which keys a message needs
(read from its headers, fetched asynchronously by the gatherer) and the verification
itself, which reads only the keys fetched before — dkimpy never touches the network here.

dkimpy is the reference Python implementation (also behind dkimpy-milter and authheaders),
verifies and signs both DKIM and ARC, and takes the key lookup as a function, which is what
lets the lookups happen before, asynchronously, within the message's deadline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import dkim
import dkim.canonicalization

from filter_server.auth.headers import (
    MAX_ARC_SETS,
    MAX_HEADER_BLOCK_BYTES,
    MAX_SIGNATURES,
    HeaderField,
    tags,
)
from filter_server.auth.resolver import ERROR, Answer

# dkimpy's pattern with a look-behind: a run of blanks is tried from its first blank only.
# Without it every blank of a run not followed by CRLF started a try that scanned to the
# run's end (64 KiB of spaces in a body took 20 s).
_BLANKS_BEFORE_CRLF = re.compile(rb"(?<![\t ])[\t ]+\r\n")
_BLANKS = re.compile(rb"[\t ]+")
# Substitutions run on slices of about this size: re.sub keeps an object per match until
# it joins them, so over a whole 20 MiB body of short lines it held hundreds of MiB.
_SLICE_BYTES = 64 * 1024
_CUTTABLE = re.compile(rb"[^\t \r]")  # a slice may end after such a byte


def _sub_in_slices(pattern: re.Pattern[bytes], replacement: bytes, content: bytes) -> bytes:
    """`pattern.sub(replacement, content)` for the two blank patterns above, slice by
    slice. Slices end after a byte that is not a blank or CR, which no match of either
    pattern continues past (a match ends with LF or is all blanks), and after which the
    look-behind sees no blank: the output is the same."""
    if len(content) <= _SLICE_BYTES:
        return pattern.sub(replacement, content)
    out = []
    start = 0
    while start < len(content):
        cut = _CUTTABLE.search(content, start + _SLICE_BYTES - 1)
        end = len(content) if cut is None else cut.end()
        out.append(pattern.sub(replacement, content[start:end]))
        start = end
    return b"".join(out)


def _strip_trailing_whitespace(content: bytes) -> bytes:
    """Linear replacement for dkimpy's `re.sub(b"[\\t ]+\\r\\n", b"\\r\\n", content)`: the
    same output (its matches start at a run's first blank too), in bounded memory.
    Splitting the body into lines instead cost an object per line: 7 million for 20 MiB of
    short lines, hundreds of MiB."""
    return _sub_in_slices(_BLANKS_BEFORE_CRLF, b"\r\n", content)


def _compress_whitespace(content: bytes) -> bytes:
    """dkimpy's `re.sub(b"[\\t ]+", b" ", content)` in bounded memory."""
    return _sub_in_slices(_BLANKS, b" ", content)


dkim.canonicalization.strip_trailing_whitespace = _strip_trailing_whitespace
dkim.canonicalization.compress_whitespace = _compress_whitespace

_HEADER_NAME = re.compile(rb"([\x21-\x7e]+?):")
_LINE_END = re.compile(rb"\r?\n")


def _rfc822_parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """Replacement for dkimpy's `rfc822_parse`, linear in time and in memory. dkimpy's
    appends each continuation line to the header's value by concatenation, copying the
    value each time (a header folded over 256 KiB took 0.9 s, 1 MiB about 15 s, while the
    message is classified: issue 20, item 1), and splits the whole message, body
    included, into line objects (20 MiB of short lines: 640 MiB and 20 s, for any message
    with a DKIM-Signature or ARC-Seal). Same output for header blocks up to
    MAX_HEADER_BLOCK_BYTES; the body is converted to CRLF line ends in one pass. Larger
    header blocks (authentication reads no further) and a continuation line before any
    header (dkimpy raised IndexError: an internal error for the whole call) are
    MessageFormatErrors, so the signatures are permerrors."""
    headers: list[list[bytes]] = []
    pieces: list[bytes] = []  # the value of headers[-1], still in pieces
    position = 0
    body_start = len(message)
    while position <= len(message):
        end = _LINE_END.search(message, position, position + MAX_HEADER_BLOCK_BYTES + 2)
        if end is None and len(message) - position > MAX_HEADER_BLOCK_BYTES:
            raise dkim.MessageFormatError(
                f"header block over {MAX_HEADER_BLOCK_BYTES:,} bytes: not verified")
        line = message[position:end.start() if end else len(message)]
        next_position = end.end() if end else len(message) + 1
        if position > MAX_HEADER_BLOCK_BYTES:
            raise dkim.MessageFormatError(
                f"header block over {MAX_HEADER_BLOCK_BYTES:,} bytes: not verified")
        if not line:  # end of headers: the body follows the blank line
            body_start = next_position
            break
        position = next_position
        if line[0] in (0x09, 0x20):
            if not headers:
                raise dkim.MessageFormatError("RFC822 header starts with a continuation "
                                              f"line: {line[:80]!r}")
            pieces += (line, b"\r\n")
        else:
            match = _HEADER_NAME.match(line)
            if match is not None:
                if headers:
                    headers[-1][1] = b"".join(pieces)
                headers.append([match.group(1), b""])
                pieces = [line[match.end(0):], b"\r\n"]
            elif not line.startswith(b"From "):
                raise dkim.MessageFormatError("Unexpected characters in RFC822 header: "
                                              f"{line[:80]!r}")
    if headers:
        headers[-1][1] = b"".join(pieces)
    # re.split(b"\r?\n") then b"\r\n".join, as dkimpy does, without an object per line
    body = message[body_start:] if body_start < len(message) else b""
    return headers, body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


DKIMPY_RFC822_PARSE = dkim.rfc822_parse  # what _rfc822_parse must agree with (tests)
dkim.rfc822_parse = _rfc822_parse


@dataclass(frozen=True)
class KeyRequest:
    selector: str
    domain: str

    @property
    def name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}".lower()


@dataclass(frozen=True)
class SignatureResult:
    result: str        # pass, fail, neutral, permerror, temperror
    domain: str        # d=
    selector: str      # s=
    reason: str = ""
    signed_headers: tuple[str, ...] = ()   # h=, lower-case


@dataclass(frozen=True)
class ArcResult:
    result: str        # pass, fail, none, temperror
    reason: str = ""
    sealer: str = ""   # d= of the newest ARC-Seal
    instances: int = 0


_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def _valid_name(text: str) -> bool:
    return bool(text) and len(text) <= 253 and \
        all(_LABEL.match(part) for part in text.rstrip(".").split("."))


def key_requests(fields: list[HeaderField]) -> list[KeyRequest]:
    """Keys the first DKIM signatures and the ARC sets name (each once)."""
    out: dict[KeyRequest, None] = {}
    signatures = 0
    arc = 0
    for field in fields:
        lname = field.name.lower()
        if lname == "dkim-signature":
            signatures += 1
            if signatures > MAX_SIGNATURES:
                continue
        elif lname in ("arc-seal", "arc-message-signature"):
            arc += 1
            if arc > 2 * MAX_ARC_SETS:
                continue
        else:
            continue
        parsed = tags(field.value)
        if parsed is None:
            continue
        selector, domain = parsed.get("s", ""), parsed.get("d", "").lower().rstrip(".")
        if _valid_name(selector) and _valid_name(domain):
            out[KeyRequest(selector, domain)] = None
    return list(out)


class _Keys:
    """The prefetched keys, as dkimpy's `dnsfunc`."""

    def __init__(self, answers: Mapping[str, Answer]) -> None:
        self.answers = answers  # keyed by KeyRequest.name (lower case, no final dot)

    def status(self, name: str) -> Answer | None:
        return self.answers.get(name.lower().rstrip("."))

    def __call__(self, name: bytes | str, timeout: float = 0) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        answer = self.status(text)
        if answer is None or answer.status != "ok":
            return None
        records = answer.records
        for record in records:  # the DKIM key record among several TXT records
            if record.startswith(b"v=DKIM1") or b"p=" in record:
                return record
        return records[0] if records else None


def verify_dkim(raw: bytes, fields: list[HeaderField],
                answers: dict[str, Answer]) -> list[SignatureResult]:
    """The result of each of the first MAX_SIGNATURES DKIM signatures."""
    count = sum(1 for f in fields if f.name.lower() == "dkim-signature")
    if not count:
        return []
    keys = _Keys(answers)
    try:
        verifier = dkim.DKIM(raw, minkey=1024, timeout=0)
    except dkim.DKIMException as exc:
        return [SignatureResult("permerror", "", "", f"message not parseable: {exc}")]
    results = []
    sig_fields = [f for f in fields if f.name.lower() == "dkim-signature"]
    for idx in range(min(count, MAX_SIGNATURES)):
        parsed = tags(sig_fields[idx].value) if idx < len(sig_fields) else None
        if parsed is None:
            results.append(SignatureResult("permerror", "", "", "malformed or oversized "
                                           "signature"))
            continue
        domain = parsed.get("d", "").lower().rstrip(".")
        selector = parsed.get("s", "")
        signed = tuple(h.strip().lower() for h in parsed.get("h", "").split(":") if h.strip())
        result, reason = _verify_one(verifier, idx, KeyRequest(selector, domain), keys)
        results.append(SignatureResult(result, domain, selector, reason, signed))
    return results


def _verify_one(verifier: dkim.DKIM, idx: int, request: KeyRequest,
                keys: _Keys) -> tuple[str, str]:
    if not (_valid_name(request.selector) and _valid_name(request.domain)):
        return "permerror", "bad d= or s="
    answer = keys.status(request.name)
    if answer is None:
        return "permerror", "key not looked up"
    if answer.status == ERROR:
        return "temperror", f"key lookup: {answer.detail or 'DNS error'}"
    record = keys(request.name)
    if record is None:
        return "permerror", "no key for signature"
    try:
        dkim.evaluate_pk(request.name.encode(), record)
    except (dkim.KeyFormatError, dkim.UnknownKeyTypeError, ValueError) as exc:
        return "permerror", f"bad key: {_short(exc)}"
    except Exception as exc:  # base64/asn1 errors of a malformed key record
        return "permerror", f"bad key: {type(exc).__name__}"
    try:
        ok = verifier.verify(idx=idx, dnsfunc=keys)
    except dkim.ValidationError as exc:
        text = _short(exc)
        if "x= value is past" in text:
            return "fail", "signature expired"
        if "body hash mismatch" in text:
            return "fail", "body hash did not verify"
        return "permerror", text
    except dkim.DKIMException as exc:
        return "permerror", _short(exc)
    except Exception as exc:  # dkimpy on hostile input: never an error to the caller
        return "permerror", f"unverifiable: {type(exc).__name__}"
    return ("pass", "") if ok else ("fail", "signature did not verify")


def verify_arc(raw: bytes, fields: list[HeaderField],
               answers: dict[str, Answer]) -> ArcResult:
    seals = [f for f in fields if f.name.lower() == "arc-seal"]
    if not seals:
        return ArcResult("none")
    if len(seals) > MAX_ARC_SETS:
        return ArcResult("fail", f"more than {MAX_ARC_SETS} ARC sets", instances=len(seals))
    keys = _Keys(answers)
    sealer = ""
    newest = -1
    for field in fields:
        if field.name.lower() not in ("arc-seal", "arc-message-signature"):
            continue
        parsed = tags(field.value)
        if parsed is None:
            return ArcResult("fail", "malformed ARC header", instances=len(seals))
        request = KeyRequest(parsed.get("s", ""), parsed.get("d", "").lower().rstrip("."))
        answer = keys.status(request.name)
        if answer is not None and answer.status == ERROR:
            return ArcResult("temperror", f"key lookup: {answer.detail or 'DNS error'}",
                             instances=len(seals))
        if field.name.lower() == "arc-seal":
            try:
                instance = int(parsed.get("i", "0"))
            except ValueError:
                instance = 0
            if instance > newest:
                newest, sealer = instance, request.domain
    try:
        cv, _results, reason = dkim.ARC(raw, minkey=1024, timeout=0).verify(dnsfunc=keys)
    except dkim.DKIMException as exc:
        return ArcResult("fail", _short(exc), sealer, len(seals))
    except Exception as exc:  # hostile input: never an error to the caller
        return ArcResult("fail", f"unverifiable: {type(exc).__name__}", sealer, len(seals))
    result = cv.decode() if isinstance(cv, bytes) else str(cv)
    return ArcResult(result if result in ("pass", "fail", "none") else "fail",
                     reason if isinstance(reason, str) else str(reason), sealer, len(seals))


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."
