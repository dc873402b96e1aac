"""The model directory of a training run: what `train` writes into it, and when.

Beside the files of `crossattn.models.checkpoint` (config, weights, vocabularies, tokenizers,
extraction), a run keeps

    checkpoint.safetensors   what resume reads: weights, AdamW moments and step, in one file
    train_state.json         the last save's step, elapsed seconds, dev metrics (for people)

A save writes the checkpoint first (it is the one consistent unit that resume reads, see
`crossattn.training.checkpoint`), then ``model.safetensors`` and ``train_state.json`` for the
readers of the directory; a process killed between the two leaves a model one save behind its
checkpoint, which the next save (or the resumed run) brings level.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..models.checkpoint import (
    CONFIG_FILE,
    EXTRACTION_FILE,
    SOURCE_VOCAB_FILE,
    TARGET_VOCAB_FILE,
    WEIGHTS_FILE,
    save_model,
    temporaries,
    write_json,
)
from ..models.tokenizer import TOKENIZER_FILE
from .checkpoint import save_checkpoint

STATE_FILE = "train_state.json"
CHECKPOINT_FILE = "checkpoint.safetensors"

# the files `train` writes into a model directory (optimizer.safetensors: an earlier layout)
MODEL_DIR_FILES = (CHECKPOINT_FILE, STATE_FILE, WEIGHTS_FILE, "optimizer.safetensors",
                   EXTRACTION_FILE, CONFIG_FILE, SOURCE_VOCAB_FILE, TARGET_VOCAB_FILE,
                   TOKENIZER_FILE)  # fmt: skip


def model_files(directory: str | os.PathLike) -> list[str]:
    """The names of the model-directory files (see `MODEL_DIR_FILES`) that ``directory`` has."""
    d = Path(directory)
    return [name for name in MODEL_DIR_FILES if (d / name).is_file()]


def remove_temporaries(out: Path) -> None:
    """Remove the temporary files of saves that a killed process left (see `atomic_write`)."""
    for name in MODEL_DIR_FILES:
        for path in temporaries(out / name):
            shutil.rmtree(path, ignore_errors=True)


def remove_model_files(out: Path) -> None:
    """Remove the model-directory files of ``out``, its checkpoint first (so that it can never
    pair with the new run's vocabularies)."""
    for name in model_files(out):
        (out / name).unlink()


def save_run(
    out: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    seconds: float,
    dev: dict[str, float],
    finish: Callable[[], None] | None = None,
) -> None:
    """Save the checkpoint (the unit `resume` reads), then, for the readers of the directory,
    run ``finish`` (the end of a run: it writes extraction.json), write the weights, and last
    ``train_state.json``, which says whether the run ``finished`` at that step."""
    record = {"step": step, "seconds": seconds, "dev": dev}
    save_checkpoint(out / CHECKPOINT_FILE, model, optimizer, record)
    if finish is not None:
        finish()
    save_model(out, model, step=step)
    write_json(out / STATE_FILE, {**record, "finished": finish is not None})


def finished(out: Path, state: dict[str, Any]) -> bool:
    """Whether the run in ``out`` finished at the checkpoint's step: its state says so and its
    weights are whole and of that step (so extraction.json was written for them)."""
    from safetensors import safe_open

    try:
        record = json.loads((out / STATE_FILE).read_text())
        with safe_open(str(out / WEIGHTS_FILE), framework="pt") as f:
            weights_step = (f.metadata() or {}).get("step")
    except Exception:  # missing, truncated or foreign files: not finished
        return False
    return (
        isinstance(record, dict)
        and record.get("finished") is True
        and record.get("step") == state["step"]
        and weights_step == str(state["step"])
        and (out / EXTRACTION_FILE).is_file()
    )
