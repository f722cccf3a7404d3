"""Training sources: Maildir folders, mbox files, single messages and directories of them."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest

from filter_server.bayes.sources import SourceError, count_files, describe, iter_messages


def message(n: int, body: str = "") -> bytes:
    return (f"From: sender{n}@example.com\nSubject: message {n}\n\n"
            f"{body or f'body of message {n}'}\n").encode()


def subjects(source: Path) -> list[str]:
    found = []
    for _, raw in iter_messages(source):
        line = next(l for l in raw.splitlines() if l.startswith(b"Subject: "))
        found.append(line.decode()[len("Subject: "):])
    return found


def make_maildir(path: Path, numbers: list[int], new: list[int] = ()) -> mailbox.Maildir:
    box = mailbox.Maildir(str(path), create=True)
    for n in numbers:
        box.add(mailbox.MaildirMessage(message(n)))          # lands in new/
    for key in list(box.keys()):
        if int(box.get_message(key)["Subject"].split()[-1]) not in new:
            msg = box.get_message(key)
            msg.set_subdir("cur")
            box[key] = msg
    return box


def test_maildir_reads_cur_and_new_but_not_tmp_or_subfolders(tmp_path):
    box = make_maildir(tmp_path / "Inbox", [1, 2, 3], new=[3])
    (tmp_path / "Inbox" / "tmp" / "in-progress").write_bytes(message(99))
    box.add_folder("Spam").add(message(50))           # Maildir++ .Spam: another label
    assert describe(tmp_path / "Inbox") == "Maildir"
    assert sorted(subjects(tmp_path / "Inbox")) == ["message 1", "message 2", "message 3"]
    assert count_files(tmp_path / "Inbox") == 3
    assert subjects(tmp_path / "Inbox" / ".Spam") == ["message 50"]   # given on its own


def test_mbox_yields_each_message_without_its_from_line(tmp_path):
    path = tmp_path / "spam.mbox"
    box = mailbox.mbox(str(path))
    # a body line starting with "From " is escaped in the file and must come back whole
    for n, body in ((1, ""), (2, "From here on, all is cheap"), (3, "")):
        box.add(mailbox.mboxMessage(message(n, body)))
    box.close()
    assert describe(path) == "mbox" and count_files(path) is None
    got = list(iter_messages(path))
    assert [raw.split(b"\n")[0] for _, raw in got] == [b"From: sender1@example.com",
                                                        b"From: sender2@example.com",
                                                        b"From: sender3@example.com"]
    assert b"\nFrom here on, all is cheap\n" in got[1][1]
    assert [name for name, _ in got] == [f"{path}#{k}" for k in range(3)]


def test_directory_recurses_into_files_mboxes_and_maildirs(tmp_path):
    root = tmp_path / "ham"
    (root / "a" / "b").mkdir(parents=True)
    (root / "one.eml").write_bytes(message(1))
    (root / "a" / "b" / "two.eml").write_bytes(message(2))
    (root / ".hidden.eml").write_bytes(message(90))           # hidden: skipped
    (root / ".git").mkdir()
    (root / ".git" / "x.eml").write_bytes(message(91))        # inside a hidden dir: skipped
    box = mailbox.mbox(str(root / "a" / "archive"))
    box.add(mailbox.mboxMessage(message(3)))
    box.add(mailbox.mboxMessage(message(4)))
    box.close()
    make_maildir(root / "a" / "Maildir", [5, 6], new=[6])
    (root / "a" / "Maildir" / "tmp" / "partial").write_bytes(message(92))
    assert describe(root) == "directory"
    assert sorted(subjects(root)) == [f"message {n}" for n in range(1, 7)]


def test_single_message_file(tmp_path):
    path = tmp_path / "one.eml"
    path.write_bytes(message(7))
    assert describe(path) == "message file" and count_files(path) == 1
    assert list(iter_messages(path)) == [(str(path), message(7))]


def test_order_is_stable(tmp_path):
    for n in (3, 1, 2):
        (tmp_path / f"{n}.eml").write_bytes(message(n))
    assert subjects(tmp_path) == ["message 1", "message 2", "message 3"]
    assert subjects(tmp_path) == subjects(tmp_path)


def test_missing_source_is_a_clear_error(tmp_path):
    assert describe(tmp_path / "nope") == "missing"
    with pytest.raises(SourceError, match="does not exist"):
        list(iter_messages(tmp_path / "nope"))
