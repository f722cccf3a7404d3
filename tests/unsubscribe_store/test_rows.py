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


def test_unquoted_csv_lines_are_split_as_the_csv_module_splits_them() -> None:
    """RowParser splits a line without quotes on its commas itself (the common case, and a
    measurable share of an import's per-row cost); it must read every line exactly as the
    csv module does, including empty fields, spaces and a NUL (left to the csv module)."""
    import csv
    import random
    rng = random.Random(7)
    alphabet = "ab@.,, \t;'x\\\0é\""
    for _ in range(5000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))).strip("\r\n")
        if not line.strip():
            continue
        data = f"address,scope,source\n{line}\n".encode()
        parser = RowParser("csv")
        got = parser.feed(data) + parser.finish()
        try:
            fields = next(csv.reader([line]))
        except csv.Error:
            assert len(got) == 1 and isinstance(got[0], RowError), line
            continue
        expected = parse_fields(dict(zip(["address", "scope", "source"], fields)))
        assert [_comparable(g) for g in got] == [_comparable(expected)], line


def parse_fields(fields: dict):
    return RowParser("csv")._row(fields)


def _comparable(item):
    return (type(item).__name__, getattr(item, "message", None), getattr(item, "address", None),
            getattr(item, "scope", None), getattr(item, "source", None))
