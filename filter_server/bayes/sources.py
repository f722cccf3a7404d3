"""Where labelled mail for training comes from: a user's own mail stores.

A source is a path:
- a Maildir (a directory with `cur/` or `new/`): every message in `cur/` and `new/` (`tmp/`
  holds deliveries in progress and is skipped), and its Maildir++ sub-folders are not
  followed (they hold other labels: give them as their own source);
- an mbox file (starts with a `From ` line): every message in it, with the `>From ` quoting
  of body lines undone (mboxrd: one `>` removed from `>From `, `>>From ` ...);
- any other file: one raw RFC 5322 message;
- any other directory: each file under it, recursively (hidden files and directories
  skipped), read as one of the above — so a directory of mbox files or of Maildirs works.

Messages are read lazily, in a stable order, so a large mailbox is never held in memory.
"""

from __future__ import annotations

import mailbox
import re
from pathlib import Path
from typing import Iterator

MBOX_MAGIC = b"From "
# A body line that starts with "From " is written ">From " into an mbox (and ">From " as
# ">>From "); Python's mailbox leaves the quoting in, so a reader undoes it here.
_MBOX_QUOTED = re.compile(rb"^>(>*From )", re.M)


class SourceError(ValueError):
    """A path that is no mail source (missing, unreadable)."""


def is_maildir(path: Path) -> bool:
    return path.is_dir() and ((path / "cur").is_dir() or (path / "new").is_dir())


def is_mbox(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(MBOX_MAGIC)) == MBOX_MAGIC
    except OSError:
        return False


def _visible_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in
                                             p.relative_to(directory).parts))


def describe(path: Path) -> str:
    """What kind of source `path` is, for progress lines."""
    if is_maildir(path):
        return "Maildir"
    if path.is_dir():
        return "directory"
    if path.is_file():
        return "mbox" if is_mbox(path) else "message file"
    return "missing"


def iter_messages(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, raw bytes) of every message in the source `path`; see the module docstring."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    if is_maildir(path):
        for sub in ("cur", "new"):
            folder = path / sub
            if folder.is_dir():
                for file in sorted(p for p in folder.iterdir()
                                   if p.is_file() and not p.name.startswith(".")):
                    yield str(file), file.read_bytes()
        return
    if path.is_dir():
        for file in _visible_files(path):
            if file.parent.name == "tmp" and is_maildir(file.parent.parent):
                continue   # a delivery in progress inside a Maildir found by recursion
            yield from iter_messages(file)
        return
    if is_mbox(path):
        box = mailbox.mbox(str(path), create=False)
        try:
            for key in box.iterkeys():
                yield f"{path}#{key}", _MBOX_QUOTED.sub(rb"\1", box.get_bytes(key, from_=False))
        finally:
            box.close()
        return
    yield str(path), path.read_bytes()


def count_files(path: Path) -> int | None:
    """How many messages `path` holds when that is cheap to know (not for mbox files)."""
    path = Path(path)
    if is_maildir(path):
        return sum(1 for sub in ("cur", "new") if (path / sub).is_dir()
                   for p in (path / sub).iterdir() if p.is_file() and not p.name.startswith("."))
    if path.is_dir():
        files = _visible_files(path)
        if any(is_mbox(f) for f in files[:50]):
            return None
        return len(files)
    if path.is_file():
        return None if is_mbox(path) else 1
    return None
