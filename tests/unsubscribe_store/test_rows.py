"""CSV/JSONL import rows (unsubscribe_store.rows): a line too long is one error for the
whole line — its tail is never read as a row of its own (issue 20, item 16) — whether the
bytes arrive in one piece (the CLI's local check) or split anywhere (the server)."""

from __future__ import annotations

import pytest

from unsubscribe_store.rows import MAX_LINE, ImportRow, RowError, RowParser, parse_all

LONG = b"x" * (MAX_LINE + 4096)
DATA = b"address\nfirst@example.com\n" + LONG + b"victim@example.com\nlast@example.com\n"


def _feed(chunks: list[bytes]) -> list[ImportRow | RowError]:
    parser = RowParser("csv")
    out: list[ImportRow | RowError] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out + parser.finish()


@pytest.mark.parametrize("size", [len(DATA), 256 * 1024, 8192, 4096, 1000, 777])
def test_a_long_line_is_one_error_and_its_tail_is_not_a_row(size):
    items = _feed([DATA[i:i + size] for i in range(0, len(DATA), size)])
    rows = [(i.line, i.address) for i in items if isinstance(i, ImportRow)]
    errors = [(e.line, e.message) for e in items if isinstance(e, RowError)]
    assert rows == [(2, "first@example.com"), (4, "last@example.com")]
    assert errors == [(3, f"line longer than {MAX_LINE} bytes")]


def test_the_local_check_sees_the_same():
    rows, errors = parse_all("csv", DATA)
    assert [r.address for r in rows] == ["first@example.com", "last@example.com"]
    assert [(e.line, e.message) for e in errors] == [(3, f"line longer than {MAX_LINE} bytes")]


def test_a_long_last_line_without_newline():
    rows, errors = parse_all("csv", b"address\nok@example.com\n" + LONG)
    assert [r.address for r in rows] == ["ok@example.com"]
    assert [e.line for e in errors] == [3]
