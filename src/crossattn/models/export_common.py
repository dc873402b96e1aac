"""What every exporter of a `Seq2SeqTransformer` shares: its weights read by name, the optional
packages an export needs, and an output directory written whole or not at all.

The exporters read the model's state dict by parameter name (``encoder.0.self_attn.to_q.weight``,
...), never its modules' internals, so a faster decoder that keeps the names exports unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from .seq2seq import Seq2SeqTransformer
from .vocab import Vocabulary

EXPORT_EXTRA = "pip install 'crossattn[export]'"
"""How to install what the exporters need (ctranslate2, onnx, onnxscript, onnxruntime)."""

ATTENTION_PARAMS = ("to_q.weight", "to_q.bias", "to_k.weight", "to_v.weight", "to_v.bias",
                    "to_out.weight", "to_out.bias")  # fmt: skip
FFN_PARAMS = ("ffn.linear_in.weight", "ffn.linear_in.bias", "ffn.linear_out.weight",
              "ffn.linear_out.bias")  # fmt: skip
ENCODER_NORMS = ("attn_block.norm", "ffn_block.norm")
DECODER_NORMS = ("self_block.norm", "cross_block.norm", "ffn_block.norm")


def require(module: str, purpose: str) -> object:
    """Import an optional package, or raise ImportError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{purpose} needs the package {module!r}, which is not installed: {EXPORT_EXTRA}"
        ) from err


def expected_names(model: Seq2SeqTransformer) -> list[str]:
    """Every state-dict name an exporter reads, in a fixed order."""
    c = model.config
    names = ["source_embed.weight", "target_embed.weight", "output.weight"]
    for i in range(c.encoder_layers):
        names += [f"encoder.{i}.self_attn.{p}" for p in ATTENTION_PARAMS]
        names += [f"encoder.{i}.{p}" for p in FFN_PARAMS]
        names += [f"encoder.{i}.{n}.{w}" for n in ENCODER_NORMS for w in ("weight", "bias")]
    for i in range(c.decoder_layers):
        for attn in ("self_attn", "cross_attn_target_to_source"):
            names += [f"decoder.{i}.{attn}.{p}" for p in ATTENTION_PARAMS]
        names += [f"decoder.{i}.{p}" for p in FFN_PARAMS]
        names += [f"decoder.{i}.{n}.{w}" for n in DECODER_NORMS for w in ("weight", "bias")]
    if c.norm_first:
        names += [f"{n}.{w}" for n in ("encoder_norm", "decoder_norm") for w in ("weight", "bias")]
    return names


def model_weights(model: Seq2SeqTransformer) -> dict[str, Tensor]:
    """The model's parameters by name: float32, on the CPU, detached copies.

    Raises:
        TypeError: `model` is not a `Seq2SeqTransformer`.
        ValueError: a parameter an exporter needs is missing, or the state dict holds one that
            no exporter knows (it would change the computation, so exporting would be wrong).
    """
    if not isinstance(model, Seq2SeqTransformer):
        raise TypeError(f"model must be a Seq2SeqTransformer, got {type(model).__name__}")
    state = model.state_dict()
    names = expected_names(model)
    missing = [n for n in names if n not in state]
    unknown = sorted(set(state) - set(names))
    if missing or unknown:
        raise ValueError(
            "cannot export this model: its parameters are not those of a Seq2SeqTransformer "
            f"that the exporters know (missing {missing[:5]}, unknown {unknown[:5]})"
        )
    return {n: state[n].detach().to("cpu", torch.float32).clone() for n in names}


def check_vocabularies(model: Seq2SeqTransformer, source_vocab, target_vocab) -> None:
    """TypeError / ValueError unless both are `Vocabulary`s of the model's vocabulary sizes."""
    if not isinstance(model, Seq2SeqTransformer):
        raise TypeError(f"model must be a Seq2SeqTransformer, got {type(model).__name__}")
    c = model.config
    for name, vocab, size in (
        ("source_vocab", source_vocab, c.source_vocab_size),
        ("target_vocab", target_vocab, c.target_vocab_size),
    ):
        if not isinstance(vocab, Vocabulary):
            raise TypeError(f"{name} must be a Vocabulary, got {type(vocab).__name__}")
        if len(vocab) != size:
            raise ValueError(f"{name} has {len(vocab)} tokens but the model has {size} ids")


def norm_eps(model: Seq2SeqTransformer) -> float:
    """The one epsilon of every LayerNorm of the model (ValueError if they differ)."""
    eps = {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}
    if len(eps) != 1:
        raise ValueError(f"cannot export: the model's LayerNorms use several epsilons {eps}")
    return float(eps.pop())


def check_out_dir(
    out: str | os.PathLike, overwrite: bool, *, protect: str | os.PathLike | None = None
) -> Path:
    """`out` as a Path, once it is known to be writable as a new directory.

    Raises:
        FileExistsError: `out` exists and `overwrite` is False (or `out` is a file).
        ValueError: `out` is, holds or lies inside `protect` (the model directory), or lies
            below a file.
    """
    out = Path(out)
    here = out.resolve()
    model_dir = None if protect is None else Path(protect).resolve()
    if model_dir is not None and (
        here == model_dir or model_dir in here.parents or here in model_dir.parents
    ):
        raise ValueError(
            f"{str(out)!r} is, holds or lies inside the model directory {str(protect)!r}; "
            "choose a directory outside it"
        )
    parent = here.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot write {str(out)!r}: {str(parent)!r} is a file, not a directory")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{str(out)!r} is an existing file; choose a directory path")
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{str(out)!r} already exists; replace it with overwrite=True (on the command "
            "line: --overwrite), or choose another directory"
        )
    return out


@contextlib.contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield an empty directory beside `out`; when the block succeeds it replaces `out`.

    A failed export leaves `out` as it was (the previous export, or nothing).
    """
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    try:
        staged = work / "new"
        staged.mkdir()
        yield staged
        old = work / "old"
        if out.exists():
            os.replace(out, old)
        os.replace(staged, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
