"""The training checkpoint: a model, its optimizer and its step, as one file.

A checkpoint is a single safetensors file: the model's parameters and persistent buffers
(``model.NAME``), the optimizer's per-parameter state (``optimizer.INDEX.KEY``, e.g. AdamW's
``exp_avg``), and the training state (step, seconds, dev metrics) as JSON in the file's metadata.
It is written to a temporary file in the same directory, flushed to disk and renamed over the
previous one, so a process killed at any instant leaves either the previous checkpoint or the
new one, never a mixture of two steps, and never half a file under the checkpoint's name.

`crossattn.training.rundir` lays out the model directory and decides when to save; this module
knows nothing about that layout. Files are written with `crossattn.models.checkpoint.atomic_write`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ..models.checkpoint import atomic_write

FORMAT = "crossattn-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, not a checkpoint, another model)."""


def _model_tensors(model: torch.nn.Module) -> dict[str, Tensor]:
    """Parameters (a tied one once) and persistent buffers, by name."""
    persistent = set(model.state_dict(keep_vars=True))
    tensors = dict(model.named_parameters())
    tensors.update((n, b) for n, b in model.named_buffers() if n in persistent)
    return tensors


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    """Write ``model``'s weights, ``optimizer``'s state and ``state`` (JSON-serialisable, e.g.
    ``{"step": 120, "seconds": 31.5}``) atomically into one safetensors file at ``path``."""
    from safetensors.torch import save_file

    tensors = {
        f"model.{n}": t.detach().cpu().contiguous() for n, t in _model_tensors(model).items()
    }
    for idx, st in optimizer.state_dict()["state"].items():
        for key, val in st.items():
            val = val if isinstance(val, Tensor) else torch.tensor(val)
            tensors[f"optimizer.{idx}.{key}"] = val.detach().cpu().contiguous()
    metadata = {"format": FORMAT, "state": json.dumps(state)}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def read_checkpoint_state(path: str | os.PathLike) -> dict[str, Any]:
    """The ``state`` saved with the checkpoint at ``path``, without loading its tensors.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is not a whole checkpoint (truncated, another format).
    """
    with _open(path) as f:
        return _state(path, f.metadata())


def load_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``model`` and ``optimizer``; return its ``state``.

    Nothing is changed unless the whole file matches the model (the same tensor names and
    shapes). Raises as `read_checkpoint_state`, and `CheckpointError` for another model.
    """
    targets = _model_tensors(model)
    with _open(path) as f:
        state = _state(path, f.metadata())
        try:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as err:  # safetensors raises its own error type for a damaged file
            raise CheckpointError(f"{path}: unreadable tensors ({err})") from err
    weights = {n[len("model.") :]: t for n, t in tensors.items() if n.startswith("model.")}
    bad = sorted(set(weights) ^ set(targets)) + sorted(
        n for n in set(weights) & set(targets) if weights[n].shape != targets[n].shape
    )
    if bad:
        raise CheckpointError(
            f"{path} does not match the model: {len(bad)} tensor(s) differ in name or shape "
            f"(first: {bad[0]!r}); expected the checkpoint of this model directory's model"
        )
    moments: dict[int, dict[str, Tensor]] = {}
    for name, val in tensors.items():
        if name.startswith("optimizer."):
            idx, key = name[len("optimizer.") :].split(".", 1)
            moments.setdefault(int(idx), {})[key] = val
    sd = optimizer.state_dict()
    sd["state"] = moments
    try:
        optimizer.load_state_dict(sd)
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: optimizer state does not match the model ({err})") from err
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(weights[name])
    return state


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[Any]:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        f = safe_open(str(path), framework="pt")
    except Exception as err:  # a truncated or foreign file: SafetensorError, OSError, ...
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or damaged: {_brief(err)})"
        ) from err
    with f:
        yield f


def _state(path: str | os.PathLike, metadata: dict[str, str] | None) -> dict[str, Any]:
    metadata = metadata or {}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a crossattn training checkpoint (format "
            f"{metadata.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        state = json.loads(metadata["state"])
        int(state["step"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its training state is unreadable ({err})") from err
    return state


def _brief(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__
