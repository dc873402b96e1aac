"""`quantize(model, compute_type)`: run a trained model in bfloat16 or int8 (see compute types).

How the int8 compute types reach the decoder, with no change to the model's code:

- every ``nn.Linear`` is swapped for an `Int8Linear` with the same call signature, attribute name
  and a `weight` that reports the activation dtype (layers check inputs against it);
- every cross-attention layer (a `CrossAttention` whose ``role`` is "cross", e.g. each decoder
  layer's ``cross_attn_target_to_source``) becomes an `Int8ContextAttention`: its
  ``prepare_context`` returns keys and values quantised by `quantize_context` (int8 with one
  scale per row, head and token), and its ``backend`` is pinned to ``"int8"``, the backend of
  `crossattn.cross_attention` that consumes them. Decoding that prepares the contexts once
  (`Seq2SeqTransformer.prepare_contexts`) and reuses them across steps and beams thus keeps the
  memory in int8 throughout.

Self-attention keys and values (the decoder's cache) stay in the activation dtype.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import replace

import torch
from torch import nn

from ..backends.int8 import Int8Tensor, quantize_rows
from ..compute_types import COMPUTE_TYPES, check_compute_type
from ..layers.attention import CrossAttention, PreparedContext
from .int8_linear import Int8Linear, best_int8_kernel

__all__ = [
    "COMPUTE_TYPES",
    "Int8ContextAttention",
    "Int8Linear",
    "check_compute_type",
    "compute_type_reason",
    "prepared_nbytes",
    "quantize",
    "quantize_context",
]


def quantize_context(prepared: PreparedContext) -> PreparedContext:
    """The same prepared context with its key and value (B, Hk, S, D) stored as int8.

    One float32 scale per (row, head, token); the mask and the owning layer are kept. A context
    already quantised is returned unchanged.
    """
    if not isinstance(prepared, PreparedContext):
        raise TypeError(f"prepared must be a PreparedContext, got {type(prepared).__name__}")
    return replace(prepared, key=quantize_rows(prepared.key), value=quantize_rows(prepared.value))


class Int8ContextAttention(CrossAttention):
    """A `CrossAttention` whose prepared context (keys and values) is stored as int8.

    Made by `quantize` from a trained layer (the class of the layer is swapped; parameters,
    module names and hooks stay). Its results equal the float layer's on the dequantised keys
    and values; its backend is the int8 one.
    """

    def _project_context(self, context, values, context_mask) -> PreparedContext:  # noqa: ANN001
        """As `CrossAttention._project_context`, with the keys and values quantised to int8."""
        return quantize_context(super()._project_context(context, values, context_mask))


def prepared_nbytes(contexts: Iterable[PreparedContext]) -> int:
    """Bytes held by the keys and values of prepared contexts (int8 data and scales counted)."""
    total = 0
    for c in contexts:
        for t in (c.key, c.value):
            total += t.nbytes_stored if isinstance(t, Int8Tensor) else t.numel() * t.element_size()
    return total


def compute_type_reason(compute_type: str) -> str | None:
    """Why `compute_type` cannot run on this machine and build (None when it can)."""
    check_compute_type(compute_type)
    if compute_type.startswith("int8"):
        try:
            best_int8_kernel()
        except RuntimeError as err:
            return str(err)
    return None


def quantize(model: nn.Module, compute_type: str, *, inplace: bool = False) -> nn.Module:
    """A model that runs in `compute_type`; `greedy_decode` and `beam_search` take it as is.

    Args:
        model: a float32 model, e.g. a trained `Seq2SeqTransformer` (any ``nn.Module``: its
            Linears and cross-attention layers are converted).
        compute_type: "float32", "bfloat16" (weights and arithmetic in bfloat16), "int8" (int8
            Linears and cross-attention memory, float32 elsewhere) or "int8_bfloat16" (the
            same, bfloat16 elsewhere); see `crossattn.compute_types`.
        inplace: convert `model` itself (its float Linears are dropped) instead of a copy.

    Returns:
        The converted model (`model` itself with ``inplace=True``), in the training mode it had.

    Raises:
        ValueError: an unknown compute type, a model already converted, an int8 type for a
            model that is not on the CPU.
        RuntimeError: an int8 type on a PyTorch build without an int8 matmul kernel.
    """
    check_compute_type(compute_type)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    converted = [type(m).__name__ for m in model.modules() if isinstance(m, Int8Linear)]
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if converted or dtypes - {torch.float32}:
        raise ValueError(
            f"model must be a float32 model to quantize to {compute_type!r}, but it "
            + (
                "holds Int8Linear layers"
                if converted
                else f"has {sorted(map(str, dtypes))} parameters"
            )  # fmt: skip
            + "; quantize the float32 model it came from"
        )
    int8 = compute_type.startswith("int8")
    dtype = torch.bfloat16 if compute_type.endswith("bfloat16") else torch.float32
    kernel = None
    if int8:
        kernel = best_int8_kernel()  # RuntimeError naming each kernel's reason when none runs
        devices = {t.device.type for t in (*model.parameters(), *model.buffers())}
        if devices - {"cpu"}:
            raise ValueError(
                f"compute_type {compute_type!r} runs on the CPU; the model is on {sorted(devices)}"
                ": move it with model.cpu() first"
            )
    if not inplace:
        model = copy.deepcopy(model)
    if int8:
        _swap_linears(model, dtype, kernel)
        for m in model.modules():
            if isinstance(m, CrossAttention) and m.role == "cross":
                m.__class__ = Int8ContextAttention
                m.backend = "int8"
    _cast_floats(model, dtype)
    return model


def _swap_linears(model: nn.Module, dtype: torch.dtype, kernel: str) -> None:
    """Replace every ``nn.Linear`` (shared ones once) by an `Int8Linear`."""
    made: dict[int, Int8Linear] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                if id(child) not in made:
                    made[id(child)] = Int8Linear.from_float(child, dtype, kernel)
                setattr(parent, name, made[id(child)])


def _cast_floats(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters and buffers to `dtype`, except the `Int8Linear`s' float32 scales.

    Parameters keep their identity (tied weights stay tied).
    """
    for m in model.modules():
        if isinstance(m, Int8Linear):
            continue
        for p in m.parameters(recurse=False):
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
        for name, b in m.named_buffers(recurse=False):
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                setattr(m, name, b.to(dtype))
