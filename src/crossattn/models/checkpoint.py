"""The model directory that `crossattn train` writes and `Translator.load` reads.

    config.json              model config (Seq2SeqConfig) and the training options
    model.safetensors        weights
    source_vocab.json        source tokens: words, or subwords (`Vocabulary`)
    target_vocab.json        target tokens
    tokenizer.json           subword tokenizers (see `crossattn.models.tokenizer`)
    extraction.json          how `crossattn align` turns cross-attention into word links

(`crossattn.training` adds its checkpoint and run state.) Every file is written atomically: to
a temporary name, flushed, then renamed over the old one (`atomic_write`), so a process killed
at any instant leaves either the previous file or the new one, never half a file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from .vocab import Vocabulary

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SOURCE_VOCAB_FILE = "source_vocab.json"
TARGET_VOCAB_FILE = "target_vocab.json"
EXTRACTION_FILE = "extraction.json"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, rename it to
    ``path``. When ``write`` fails, ``path`` keeps its previous content and no file is left.

    The temporary file lies in a folder of its own, ``.NAME.tmpPID`` beside ``path`` (writers
    such as safetensors make temporaries of their own beside the file they are given), so that
    what a killed process leaves behind is one folder named after ``path``: see `temporaries`.
    """
    path = Path(path)
    folder = path.with_name(f".{path.name}.tmp{os.getpid()}")
    folder.mkdir(exist_ok=True)
    tmp = folder / path.name
    try:
        write(tmp)
        _fsync(tmp)
        umask = os.umask(0o022)  # read it back: one mode for every file, as open() gives
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    _fsync_dir(path.parent)


def temporaries(path: str | os.PathLike) -> list[Path]:
    """What `atomic_write` of ``path`` left behind in processes that were killed meanwhile."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.tmp*"))


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (see `atomic_write`)."""
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems refuse fsync on a directory
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)


def save_model(out: Path, model: Seq2SeqTransformer, step: int | None = None) -> None:
    """Write ``model.safetensors`` into ``out`` atomically (``step``: kept in its metadata)."""
    from safetensors.torch import save_model as st_save

    metadata = None if step is None else {"step": str(step)}
    atomic_write(Path(out) / WEIGHTS_FILE, lambda p: st_save(model, str(p), metadata=metadata))


def read_config(directory: str | os.PathLike) -> Seq2SeqConfig:
    """The `Seq2SeqConfig` saved in ``directory``'s ``config.json``.

    Raises `OSError` when the file cannot be read, `ValueError` (a JSON error among them),
    `KeyError` or `TypeError` when it is not the config of a model directory.
    """
    saved = json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8"))
    return Seq2SeqConfig.from_dict(saved["model"])


def load_model(directory: str | os.PathLike) -> tuple[Seq2SeqTransformer, Vocabulary, Vocabulary]:
    """Load a model directory written by `train`: (model in eval mode, source vocab, target vocab)."""
    from safetensors.torch import load_model as st_load

    d = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE, SOURCE_VOCAB_FILE, TARGET_VOCAB_FILE):
        if not (d / name).is_file():
            raise FileNotFoundError(
                f"{d / name} is missing: is {d} a model directory of crossattn train?"
            )
    model = Seq2SeqTransformer(read_config(d))
    st_load(model, str(d / WEIGHTS_FILE))
    model.eval()
    return model, Vocabulary.load(d / SOURCE_VOCAB_FILE), Vocabulary.load(d / TARGET_VOCAB_FILE)
