"""The training rules that relate options to each other, to the model and to the data.

`train` and `crossattn train` both ask these functions, so each rule is written once. A rule
returns None or a `Problem`: the option at fault, what is wrong and how to fix it, naming every
option through ``name`` (`option_name` gives ``TrainOptions.heads``, the command line gives
``--heads``), and the exception type the library raises for it (`raise_problem`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..models.seq2seq import Seq2SeqConfig
from ..models.tokenizer import resume_conflicts as tokenizer_conflicts
from .rundir import CHECKPOINT_FILE, model_files

Namer = Callable[[str], str]
ATTENTION_LAYER_DEFAULT = -2  # the second decoder layer from the top (the only one of one)


def option_name(option: str) -> str:
    """How the library names an option: ``TrainOptions.NAME``."""
    return f"TrainOptions.{option}"


@dataclass(frozen=True)
class Problem:
    """A rule broken: ``option`` (a `TrainOptions` field) is at fault; ``message`` says why and
    how to fix it; the library raises ``error``."""

    option: str
    message: str
    error: type[Exception] = ValueError


def raise_problem(problem: Problem | None) -> None:
    """Raise ``problem`` (when there is one) as the library does: ``TrainOptions.NAME: ...``."""
    if problem is not None:
        raise problem.error(f"{option_name(problem.option)}: {problem.message}")


def heads_problem(d_model: int, heads: int, name: Namer = option_name) -> Problem | None:
    """The model width is a multiple of the head count."""
    if d_model % heads == 0:
        return None
    ok = [h for h in range(1, min(d_model, 16) + 1) if d_model % h == 0]
    return Problem(
        "heads",
        f"{name('d_model')} {d_model} must be divisible by {name('heads')}, got {name('heads')} "
        f"{heads}; expected one of {ok}{' ...' if d_model > 16 else ''} (or change "
        f"{name('d_model')})",
    )


def gold_links_problem(
    guided_alignment: bool, alignments: str | None, name: Namer = option_name
) -> Problem | None:
    """Guided alignment reads gold links from an alignment file."""
    if not guided_alignment or alignments:
        return None
    return Problem(
        "guided_alignment",
        f"needs gold links: set {name('alignments')} to the Pharaoh alignment file of "
        f"{name('data')}",
    )


def resolve_attention_layer(layer: int | None, layers: int) -> int:
    """The decoder layer of the attention losses: ``layer``, or when it is None the default
    (`ATTENTION_LAYER_DEFAULT`, or -1 for a model of one decoder layer)."""
    return max(ATTENTION_LAYER_DEFAULT, -layers) if layer is None else layer


def attention_problem(
    layer: int | None,
    head: int | None,
    layers: int,
    heads: int,
    model: str = "the model",
    name: Namer = option_name,
) -> Problem | None:
    """The attention losses' decoder ``layer`` and guided ``head`` lie in a model of ``layers``
    decoder layers and ``heads`` heads (``model`` names it in the message); None skips a check."""
    if layer is not None and not -layers <= layer < layers:
        return Problem(
            "attention_layer",
            f"got {layer}, but {model} has {layers} decoder layer(s); expected "
            f"{-layers}..{layers - 1} (negative: from the top)",
        )
    if head is not None and not -heads <= head < heads:
        return Problem(
            "attention_head",
            f"got {head}, but {model} has {heads} heads; expected {-heads}..{heads - 1}",
        )
    return None


def out_dir_problem(
    out: str, resume: bool, overwrite: bool, name: Namer = option_name
) -> Problem | None:
    """``out`` fits ``resume`` / ``overwrite``: resuming needs its checkpoint; without either,
    it holds no model."""
    found = model_files(out)
    if resume and CHECKPOINT_FILE not in found:
        what = "it holds no model files" if os.path.isdir(out) else "no such directory"
        if found:
            what = f"it holds {', '.join(found)}, but no {CHECKPOINT_FILE}"
        return Problem(
            "resume",
            f"no checkpoint found in {out!r} ({what}); check the path, or start a new run "
            f"without {name('resume')}" + (f" and with {name('overwrite')}" if found else ""),
            FileNotFoundError,
        )
    if not resume and not overwrite and found:
        shown = ", ".join(found[:3]) + (" ..." if len(found) > 3 else "")
        return Problem(
            "out",
            f"{out!r} already holds a model ({shown}); continue its training with "
            f"{name('resume')}, or replace it with {name('overwrite')} (or choose another "
            f"{name('out')})",
            FileExistsError,
        )
    return None


def resume_problem(opts: Any, saved: Seq2SeqConfig, name: Namer = option_name) -> Problem | None:
    """A resumed run keeps the saved model and tokenizer: options (`TrainOptions`) set to
    something else than both their default and the saved value are refused."""
    defaults = {f.name: f.default for f in dataclasses.fields(opts)}
    conflicts = [
        f"{field} {getattr(saved, field)!r} -> {given!r}"
        for field, given in opts.model_settings().items()
        if given != getattr(saved, field) and given != defaults[field]
    ]
    conflicts += tokenizer_conflicts(opts.out, opts.tokenizer, opts.normalization)
    if not conflicts:
        return None
    return Problem(
        "resume",
        f"these options differ from the model saved in {opts.out!r} (saved -> given): "
        f"{', '.join(conflicts)}; leave them out to keep the saved model, or train a new model "
        f"into another {name('out')}",
    )


def pairs_problem(
    lengths: Sequence[int], max_len: int, what: str, unit: str = "tokens", name: Namer = option_name
) -> Problem | None:
    """There are pairs (``lengths``: the longer side of each, in ``unit``) and one fits a model
    of ``max_len`` tokens (BOS or EOS included); ``what`` names the pairs in the message."""
    if not lengths:
        return Problem("data", f"{what} holds no sentence pairs")
    limit = max_len - 1  # room for BOS / EOS
    shortest = min(lengths)
    if shortest > limit:
        return Problem(
            "data",
            f"every pair of {what} is longer than max_len - 1 = {limit} {unit} (the shortest "
            f"has {shortest}); raise {name('max_len')} to at least {shortest + 1}",
        )
    return None


def check_out_dir(opts: Any) -> None:
    """The model directory fits the options (`TrainOptions`): `out_dir_problem` raised as
    `FileNotFoundError` / `FileExistsError`."""
    raise_problem(out_dir_problem(opts.out, opts.resume, opts.overwrite))
