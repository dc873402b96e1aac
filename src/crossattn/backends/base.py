"""What every backend receives and what it must provide.

A backend sees inputs that `crossattn.cross_attention` has already validated and normalised:

- ``query`` (B, H, L, E), ``key`` (B, Hk, S, E), ``value`` (B, Hk, S, Ev), with H = Hk * G.
- ``mask``: None, or ONE combined mask broadcastable to (B, H, L, S), already merged from
  ``key_mask`` and ``attn_mask``. Boolean True means "may attend"; a floating mask is added to
  the scaled scores. The functional layer guarantees that no query row is fully masked (such
  rows are opened up before the call and zeroed after it), so a backend never has to guard
  against a softmax over nothing.
- keys and values at padded positions (``key_mask`` False) are already zero, so NaN padding
  cannot leak through ``0 * NaN``.
- query, key, value and a float mask share one dtype, the compute dtype (under
  ``torch.autocast``, the autocast dtype: the functional layer has cast them), and the backend
  runs with autocast off, so that its own precision rules hold.

A backend returns ``(out, weights)``: out (B, H, L, Ev) in the query dtype, and weights None
unless ``inputs.return_weights`` asked for them: (B, H, L, S) for True, (B, L, S) for "mean"
(also in the query dtype). A query row holding NaN gives NaN output (and weights), as the plain
math does; the functional layer then zeroes the rows that may attend to nothing.

A backend must trace, compile and export (``tests/test_compile_export.py`` runs every registered
backend): its call path reads shapes and dtypes, never values (no ``.item()``, ``bool(t)`` or
``tolist()`` on data), and under ``torch.jit.trace`` it writes no results into preallocated
buffers (``out=``, in place), which the TorchScript-based ONNX exporter cannot express.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .._checks import shape_text

WeightsMode = Literal[False, True, "mean"]

LOG2E = math.log2(math.e)
USER_RANK = 100  # the default `Backend.rank`: after every built-in backend


@dataclass(frozen=True)
class AttentionInputs:
    """Validated, normalised arguments of one `cross_attention` call.

    Shapes: query (B, H, L, E), key (B, Hk, S, E), value (B, Hk, S, Ev), mask broadcastable to
    (B, H, L, S) or None (bool: True = may attend; float: added to the scaled scores).
    """

    query: Tensor
    key: Tensor
    value: Tensor
    mask: Tensor | None
    scale: float
    dropout_p: float
    return_weights: WeightsMode

    @property
    def batch(self) -> int:
        return self.query.shape[0]

    @property
    def heads(self) -> int:
        return self.query.shape[1]

    @property
    def kv_heads(self) -> int:
        return self.key.shape[1]

    @property
    def groups(self) -> int:
        """Query heads per K/V head (G = H / Hk)."""
        return self.query.shape[1] // self.key.shape[1]

    @property
    def q_len(self) -> int:
        return self.query.shape[2]

    @property
    def kv_len(self) -> int:
        return self.key.shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self.query.dtype

    @property
    def device(self) -> torch.device:
        return self.query.device

    @property
    def requires_grad(self) -> bool:
        return torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (self.query, self.key, self.value, self.mask)
        )

    def describe(self) -> str:
        """The call as errors show it: shapes, dtypes, device and options."""
        parts = [
            f"{name} {shape_text(t.shape)} {str(t.dtype).removeprefix('torch.')}"
            for name, t in (("query", self.query), ("key", self.key), ("value", self.value))
        ]
        if self.mask is not None:
            parts.append(
                f"mask {shape_text(self.mask.shape)} {str(self.mask.dtype).removeprefix('torch.')}"
            )
        parts.append(f"on {self.device}")
        options = f"return_weights={self.return_weights!r}, dropout_p={self.dropout_p:g}"
        grad = ", requires grad" if self.requires_grad else ""
        return ", ".join(parts) + f"; {options}{grad}"


class Backend:
    """Base class of a cross-attention backend.

    Subclasses set `name` and `description` and implement `not_supported_reasons` and `forward`.
    """

    name: str = ""
    description: str = ""

    def is_available(self) -> bool:
        """Whether the backend can run on this machine at all."""
        return True

    def not_supported_reasons(self, inputs: AttentionInputs) -> list[str]:
        """Every reason this backend cannot run `inputs`; an empty list means it can."""
        raise NotImplementedError

    def rank(self, inputs: AttentionInputs) -> float | None:
        """Where automatic dispatch tries this backend for `inputs`: lower first, ties in
        registration order; None: never chosen automatically (it still runs when pinned).

        The built-in backends rank 10 to 30 (see `crossattn.backends.policy`); this default,
        `USER_RANK` (100), tries a registered backend after them. Return less than 10 for the
        calls it should run before every built-in one. Read shapes, dtypes and devices only.
        """
        return USER_RANK

    def forward(self, inputs: AttentionInputs) -> tuple[Tensor, Tensor | None]:
        """Compute ``(out, weights)``; see the module docstring for shapes."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<crossattn backend {self.name!r}>"


def grouped(query: Tensor, groups: int) -> Tensor:
    """View query (B, H, L, E) as (B, Hk, G, L, E): query head h uses K/V head h // G."""
    b, h, length, e = query.shape
    return query.view(b, h // groups, groups, length, e)  # (B, Hk, G, L, E)


def grouped_mask(mask: Tensor | None, heads: int, groups: int) -> Tensor | None:
    """View a mask broadcastable to (B, H, L, S) as one broadcastable to (B, Hk, G, L, S)."""
    if mask is None:
        return None
    b, h, length, s = mask.shape
    if h == 1:
        return mask.unsqueeze(2)  # (B|1, 1, 1, L|1, S|1)
    return mask.reshape(b, heads // groups, groups, length, s)  # (B|1, Hk, G, L|1, S|1)
