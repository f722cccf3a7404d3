"""Hostile and fuzzed messages for the bad-input barrage.

`hostile_message(rng)` draws one message of a kind picked by weight and returns
(kind, raw bytes). Everything derives from the `random.Random` it is given, so a barrage
is reproducible from its seed. Kinds:

  random_bytes     arbitrary bytes (sometimes empty: INVALID_ARGUMENT is the right answer)
  mutated          a well-formed message with bytes flipped, inserted, deleted, cut short
  malformed_mime   broken or missing boundaries, unterminated parts, headers without
                   colons, bare CR / LF mixes, NULs, nonsense Content-Type parameters
  bad_encoding     invalid UTF-8, unknown and hostile charsets (utf-7, utf-16 with odd
                   lengths), broken RFC 2047 words, invalid quoted-printable and base64
  deep_multipart   multiparts nested hundreds to thousands of levels deep
  deep_rfc822      message/rfc822 parts nested inside each other
  header_flood     tens of thousands of headers, or one header line of megabytes
  oversized_part   one part of megabytes; now and then a whole message over the server's
                   25 MiB limit (RESOURCE_EXHAUSTED is the right answer)
  base64_bomb      megabytes of base64 on one line, base64 inside base64 inside
                   message/rfc822, and a gzip attachment that would inflate to 256 MiB
  html_bomb        tags nested deep, unclosed comments and scripts, 50,000 links
"""

from __future__ import annotations

import base64
import gzip
import io
import random

OVER_LIMIT_BYTES = 25 * 1024 * 1024 + 128 * 1024   # past `mailwarden serve`'s default

_WORDS = ("free money viagra meeting agenda invoice lunch unsubscribe click here winner "
          "offer limited time account verify password report budget schedule").split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _base_message(rng: random.Random) -> bytes:
    boundary = f"b{rng.getrandbits(32):08x}"
    html = f"<html><body><p>{_text(rng, 30)}</p><a href=\"http://10.0.0.{rng.randrange(255)}/x\">" \
           f"click</a></body></html>"
    return (
        f"From: sender{rng.randrange(10**6)}@example.com\r\n"
        f"To: rcpt@example.org\r\nSubject: {_text(rng, 5)}\r\n"
        f"Message-ID: <{rng.getrandbits(64):x}@example.com>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{_text(rng, 60)}\r\n"
        f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n"
        f"{base64.encodebytes(html.encode()).decode()}\r\n--{boundary}--\r\n").encode()


def random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 7, 64, 512, 4096, 32768]))


def mutated(rng: random.Random) -> bytes:
    data = bytearray(_base_message(rng))
    for _ in range(rng.randrange(1, 40)):
        op = rng.randrange(4)
        pos = rng.randrange(len(data)) if data else 0
        if op == 0 and data:
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[pos:pos] = rng.choice([b"\x00", b"\r", b"\n", b"--", b"=?", b"\xff\xfe",
                                        b":", b";boundary=", rng.randbytes(8)])
        elif op == 2 and data:
            del data[pos:pos + rng.randrange(1, 64)]
        else:
            data[pos:pos] = data[pos:pos + rng.randrange(1, 256)]
    if rng.random() < 0.3:
        del data[rng.randrange(len(data) + 1):]
    return bytes(data)


def malformed_mime(rng: random.Random) -> bytes:
    variants = [
        # boundary declared, never used; then an unterminated part
        b"Content-Type: multipart/mixed; boundary=abc\r\n\r\nno parts here\r\n--abd\r\n",
        # no boundary parameter at all
        b"Content-Type: multipart/mixed\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n",
        # empty and quoted-empty boundaries
        b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n\r\n----\r\n",
        # a part whose header block never ends
        b"Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\nContent-Type: text/plain"
        + b"; a=b" * 2000 + b"\r\n",
        # headers without colons, a lone CR world, NULs
        b"This is not a header\rFrom nobody\r\x00\x00Subject\r\n\r\n\x00body\x00",
        # nonsense Content-Type parameters and types
        b"Content-Type: ;;;;=;=\"\r\nContent-Type: text/\x00; charset==\r\n\r\nbody",
        # the boundary appears inside the headers and is a prefix of itself
        b"Content-Type: multipart/mixed; boundary=--\r\nX: ----\r\n\r\n------\r\n--\r\n--\r\n",
        # message/rfc822 with nothing inside
        b"Content-Type: message/rfc822\r\n\r\n",
        # duplicated, contradictory structural headers
        b"Content-Type: text/plain\r\nContent-Type: multipart/mixed; boundary=z\r\n"
        b"Content-Transfer-Encoding: base64\r\nContent-Transfer-Encoding: 7bit\r\n\r\n--z\r\n",
    ]
    head = rng.choice(variants)
    tail = _text(rng, rng.randrange(0, 200)).encode()
    return head + tail


def bad_encoding(rng: random.Random) -> bytes:
    charsets = ["utf-7", "utf-16", "utf-32", "x-unknown", "iso-2022-jp", "", "utf-8\x00",
                "cp1252", "../../etc/passwd", "a" * 300]
    charset = rng.choice(charsets)
    words = [
        "=?utf-8?B?" + "!!!notbase64" * rng.randrange(1, 20) + "?=",
        "=?utf-8?Q?=ZZ=G1=?=",
        f"=?{charset}?B?{base64.b64encode(rng.randbytes(30)).decode()}?=",
        "=?utf-8?X?unknown-encoding?=",
        "=?" * 500,
    ]
    invalid_utf8 = rng.choice([b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80",
                               b"\xff" * 50, b"\xe2\x82", bytes(range(128, 256))])
    qp = rng.choice(["=\r\n" * 200, "=4", "=XY=ZZ" * 100, "soft break at end="])
    b64 = rng.choice(["====", "abc", "!!!!" * 100, "YWJj\x00ZGVm", "Q" * 4097])
    return (f"From: {rng.choice(words)} <a@example.com>\r\n".encode()
            + b"Subject: " + rng.choice(words).encode() + invalid_utf8 + b"\r\n"
            + f"Content-Type: text/plain; charset=\"{charset}\"\r\n".encode()
            + rng.choice([b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + qp.encode(),
                          b"Content-Transfer-Encoding: base64\r\n\r\n" + b64.encode(),
                          b"Content-Transfer-Encoding: 8bit\r\n\r\n" + invalid_utf8 * 100,
                          b"\r\n" + "+AGEAYgBj-".encode() * 50 + invalid_utf8]))


def deep_multipart(rng: random.Random) -> bytes:
    depth = rng.choice([64, 300, 1000, 5000])
    out = io.BytesIO()
    out.write(b"From: deep@example.com\r\nSubject: nesting\r\n")
    for level in range(depth):
        out.write(f"Content-Type: multipart/mixed; boundary=\"n{level}\"\r\n\r\n"
                  f"--n{level}\r\n".encode())
    out.write(b"Content-Type: text/plain\r\n\r\nviagra at the bottom\r\n")
    if rng.random() < 0.5:  # close every level, or leave them all open
        for level in reversed(range(depth)):
            out.write(f"--n{level}--\r\n".encode())
    return out.getvalue()


def deep_rfc822(rng: random.Random) -> bytes:
    depth = rng.choice([50, 200, 1000])
    inner = b"From: inner@example.com\r\nSubject: core\r\n\r\nfree money\r\n"
    for level in range(depth):
        inner = (f"From: l{level}@example.com\r\nContent-Type: message/rfc822\r\n\r\n"
                 .encode() + inner)
    return inner


def header_flood(rng: random.Random) -> bytes:
    mode = rng.randrange(3)
    if mode == 0:
        count = rng.choice([5_000, 20_000, 60_000])
        headers = b"".join(f"X-H{i}: {_text(rng, 2)}\r\n".encode() for i in range(count))
    elif mode == 1:
        headers = b"Subject: " + b"A" * rng.choice([1 << 20, 3 << 20]) + b"\r\n"
    else:  # a folded header of thousands of continuation lines, encoded words in each
        headers = b"Subject: start" + b"\r\n =?utf-8?B?dmlhZ3Jh?=" * 30_000 + b"\r\n"
    return b"From: flood@example.com\r\n" + headers + b"\r\nbody\r\n"


def oversized_part(rng: random.Random) -> bytes:
    if rng.random() < 0.04:
        size = OVER_LIMIT_BYTES
    else:
        size = rng.choice([1 << 20, 4 << 20, 8 << 20])
    line = rng.random() < 0.5
    body = (b"x" * size) if line else (b"free money viagra " * (size // 18))
    return (b"From: big@example.com\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
            b"--B\r\nContent-Type: text/plain\r\n\r\n" + body + b"\r\n--B--\r\n")


def base64_bomb(rng: random.Random) -> bytes:
    mode = rng.randrange(3)
    if mode == 0:  # megabytes of base64, on one line
        payload = base64.b64encode(b"viagra " * rng.choice([150_000, 600_000]))
        return (b"From: b64@example.com\r\nContent-Type: text/plain\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n" + payload + b"\r\n")
    if mode == 1:  # base64 inside message/rfc822 inside base64, a few times over
        message = b"From: x@example.com\r\nSubject: core\r\n\r\n" + b"free money " * 20_000
        for level in range(rng.choice([3, 6, 10])):
            message = (f"From: l{level}@example.com\r\nContent-Type: message/rfc822\r\n"
                       "Content-Transfer-Encoding: base64\r\n\r\n").encode() + \
                base64.encodebytes(message)
        return message
    # A gzip attachment that would inflate to 256 MiB if anyone decompressed it.
    bomb = _gzip_bomb()
    return (b"From: zip@example.com\r\nContent-Type: multipart/mixed; boundary=Z\r\n\r\n"
            b"--Z\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--Z\r\n"
            b"Content-Type: application/gzip; name=report.gz\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(bomb)
            + b"\r\n--Z--\r\n")


_BOMB: bytes | None = None


def _gzip_bomb() -> bytes:
    global _BOMB
    if _BOMB is None:
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as handle:
            chunk = bytes(1 << 20)
            for _ in range(256):
                handle.write(chunk)
        _BOMB = buffer.getvalue()
    return _BOMB


def html_bomb(rng: random.Random) -> bytes:
    mode = rng.randrange(3)
    if mode == 0:
        html = "<div>" * 100_000 + "viagra" + "</div>" * rng.choice([0, 100_000])
    elif mode == 1:
        html = "<!-- never closed " + "<script>" * 10_000 + "x" * 200_000
    else:
        html = "".join(f'<a href="http://h{i}.example/{i}">l</a>' for i in range(50_000))
    return (b"From: html@example.com\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            + html.encode())


KINDS = {  # kind: (generator, weight in %) — the big ones are rarer, to keep the bytes sane
    "random_bytes": (random_bytes, 15),
    "mutated": (mutated, 32),
    "malformed_mime": (malformed_mime, 18),
    "bad_encoding": (bad_encoding, 18),
    "deep_multipart": (deep_multipart, 5),
    "deep_rfc822": (deep_rfc822, 4),
    "header_flood": (header_flood, 2),
    "oversized_part": (oversized_part, 1),
    "base64_bomb": (base64_bomb, 2),
    "html_bomb": (html_bomb, 3),
}
_NAMES = list(KINDS)
_WEIGHTS = [KINDS[k][1] for k in _NAMES]


def hostile_message(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choices(_NAMES, _WEIGHTS)[0]
    return kind, KINDS[kind][0](rng)
