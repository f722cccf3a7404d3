"""CSV and JSONL rows for bulk import and export.

Both formats carry the columns ``address, scope, reason, source, first_seen``; only the
address is required (CSV: a header row names the columns, in any order; ``email`` and
``email address`` are accepted for ``address`` since that is what other providers export).
``first_seen`` is ISO 8601 or Unix seconds; naive times are UTC. Lines are parsed one at a
time as the bytes stream in, so a file of any size is read in constant memory.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from mailwarden.addresses import AddressInvalid, normalize_address, normalize_scope
from mailwarden.suppression import Reason
from unsubscribe_store.model import ImportRow, Suppression

COLUMNS = ("address", "scope", "reason", "source", "first_seen")
_ALIASES = {"email": "address", "email address": "address", "email_address": "address",
            "list": "scope", "created_at": "first_seen"}
FORMATS = ("csv", "jsonl")
MAX_LINE = 64 * 1024


@dataclass(frozen=True)
class RowError:
    line: int
    message: str


def _parse_time(value: object) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), timezone.utc)
    text = str(value).strip()
    try:
        return datetime.fromtimestamp(float(text), timezone.utc)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"first_seen {text!r} is neither ISO 8601 nor Unix seconds") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class RowParser:
    """Feed bytes in any split; get back validated rows and per-line errors."""

    def __init__(self, fmt: str, *, default_scope: str = "*",
                 default_reason: Reason = Reason.UNSUBSCRIBE,
                 default_source: str = "import") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}")
        self.fmt = fmt
        self.default_scope = normalize_scope(default_scope or "*")
        self.default_reason = default_reason
        self.default_source = default_source or "import"
        self._buffer = b""
        self._skipping = False  # inside a line already reported as too long
        self._line = 0
        self._header: list[str] | None = None

    def feed(self, data: bytes) -> list[ImportRow | RowError]:
        if self._skipping:
            # The rest of a line already reported as too long: drop it up to its end, never
            # read its tail as a row of its own.
            end = data.find(b"\n")
            if end < 0:
                return []
            data = data[end + 1:]
            self._skipping = False
        self._buffer += data
        out: list[ImportRow | RowError] = []
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            out.extend(self._line_in(raw))
        if len(self._buffer) > MAX_LINE:
            self._line += 1
            out.append(RowError(self._line, f"line longer than {MAX_LINE} bytes"))
            self._buffer = b""
            self._skipping = True
        return out

    def finish(self) -> list[ImportRow | RowError]:
        rest, self._buffer = self._buffer, b""
        self._skipping = False
        out = self._line_in(rest) if rest.strip() else []
        if self.fmt == "csv" and self._header is None:
            out.append(RowError(max(self._line, 1), "empty file: a CSV import needs a header row"))
        return out

    def _line_in(self, raw: bytes) -> list[ImportRow | RowError]:
        self._line += 1
        if len(raw) > MAX_LINE:
            return [RowError(self._line, f"line longer than {MAX_LINE} bytes")]
        try:
            text = raw.decode("utf-8-sig" if self._line == 1 else "utf-8").rstrip("\r")
        except UnicodeDecodeError:
            return [RowError(self._line, "not valid UTF-8")]
        if not text.strip():
            return []
        if self.fmt == "jsonl":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                return [RowError(self._line, f"invalid JSON: {exc.msg}")]
            if not isinstance(obj, dict):
                return [RowError(self._line, "each line must be a JSON object")]
            fields = {_ALIASES.get(str(k).lower(), str(k).lower()): v for k, v in obj.items()}
        else:
            if '"' not in text and "\0" not in text:
                # Nothing quoted: the csv module would split on the commas, and this is a
                # measurable share of the per-row cost of an import (tests compare the two).
                values = text.split(",")
            else:
                try:
                    values = next(csv.reader([text]))
                except csv.Error as exc:
                    return [RowError(self._line, f"invalid CSV: {exc}")]
            if self._header is None:
                header = [_ALIASES.get(v.strip().lower(), v.strip().lower()) for v in values]
                if "address" not in header:
                    return [RowError(self._line, "the CSV header row has no 'address' column "
                                                 f"(found: {', '.join(values)})")]
                self._header = header
                return []
            fields = dict(zip(self._header, values))
        return [self._row(fields)]

    def _row(self, fields: dict) -> ImportRow | RowError:
        try:
            address = fields.get("address")
            if not isinstance(address, str):
                raise ValueError("address is missing")
            address = normalize_address(address)
            scope = normalize_scope(str(fields.get("scope") or "") or self.default_scope)
            reason_text = str(fields.get("reason") or "")
            reason = Reason.parse(reason_text) if reason_text else self.default_reason
            source = str(fields.get("source") or "") or self.default_source
            if len(source) > 200:
                raise ValueError("source longer than 200 characters")
            first_seen = _parse_time(fields.get("first_seen"))
        except (AddressInvalid, ValueError, OverflowError, OSError) as exc:
            return RowError(self._line, str(exc))
        return ImportRow(self._line, address, scope, reason, source, first_seen)


def parse_all(fmt: str, data: bytes, **defaults) -> tuple[list[ImportRow], list[RowError]]:
    parser = RowParser(fmt, **defaults)
    items = parser.feed(data) + parser.finish()
    rows = [i for i in items if isinstance(i, ImportRow)]
    errors = [i for i in items if isinstance(i, RowError)]
    return rows, errors


def format_rows(fmt: str, suppressions: Iterable[Suppression], *, header: bool) -> bytes:
    """Rows in a format ``RowParser`` reads back (round trip)."""
    out = io.StringIO()
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        if header:
            writer.writerow(COLUMNS)
        for s in suppressions:
            writer.writerow([s.address, s.scope, s.reason.value, s.source,
                             s.first_seen.isoformat()])
    elif fmt == "jsonl":
        for s in suppressions:
            out.write(json.dumps({"address": s.address, "scope": s.scope,
                                  "reason": s.reason.value, "source": s.source,
                                  "first_seen": s.first_seen.isoformat()}) + "\n")
    else:
        raise ValueError(f"format must be one of {FORMATS}")
    return out.getvalue().encode()
