"""Small helpers shared by the composite layers: the layers' own argument checks (features,
parameters' dtype and device, empty inputs), a fast dropout and a GELU feed-forward. The general
rules (ints, probabilities, token masks) live in `crossattn._checks`; the names re-exported here
keep the layers' imports short."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import nonnegative_ints as check_nonnegative  # noqa: F401  (shared by the layers)
from .._checks import positive_ints as check_positive
from .._checks import token_mask as check_mask  # noqa: F401
from ..masks import dropout_mask


def check_features(
    name: str, t: object, dim: int, legend: str, *, like: Tensor | None = None
) -> Tensor:
    """A floating (B, N, dim) tensor, or TypeError/ValueError naming `name` and the shapes.

    With `like` (a parameter of the layer), `t` must also have its dtype and device
    (see `check_like_params`).
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {legend}, got {type(t).__name__}")
    if t.dim() != 3 or t.shape[-1] != dim:
        raise ValueError(
            f"{name} must have shape {legend} with last dim {dim}, got {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if like is not None:
        check_like_params(name, t, like)
    return t


def _verb(name: str, singular: str, plural: str) -> str:
    """`plural` for argument names that read as plurals (queries, tokens, media, ...)."""
    return plural if name.endswith("s") or name == "media" else singular


def check_like_params(name: str, t: Tensor, param: Tensor) -> None:
    """`t` must have the dtype (outside autocast) and the device of the layer's `param`.

    The same rule, and the same wording, as `CrossAttention`: a TypeError for the dtype, a
    ValueError for the device, each naming the argument and saying how to fix the call.
    """
    if t.dtype != param.dtype and not torch.is_autocast_enabled(t.device.type):
        raise TypeError(
            f"{name} {_verb(name, 'has', 'have')} dtype {t.dtype} but the layer's parameters "
            f"are {param.dtype}; cast the input ({name}.to({param.dtype})) or the layer "
            f"(layer.to({t.dtype}))"
        )
    if t.device != param.device:
        raise ValueError(
            f"{name} {_verb(name, 'is', 'are')} on {t.device} but the layer's parameters are "
            f"on {param.device}; move one of them (.to(device))"
        )


def check_nonempty(name: str, count: int, shape: tuple[int, ...], what: str, hint: str) -> None:
    """ValueError naming `name` (given with `shape`) when `count` == 0: an attention needs
    something to attend to. `what` names the empty axis ("S=0 tokens"); `hint` says how to fix
    the call."""
    if count == 0:
        raise ValueError(
            f"{name} {_verb(name, 'has', 'have')} {what} (shape {tuple(shape)}): there is "
            f"nothing to attend to; {hint}"
        )


def fast_dropout(features: Tensor, p: float, training: bool = True) -> Tensor:
    """Dropout with the law of ``torch.nn.functional.dropout``, faster on the CPU.

    Each element is kept with probability ``1 - p`` (to within 2**-17) and scaled by
    ``1 / (1 - p)``; the keep-mask (`crossattn.masks.dropout_mask`) compares cheap 16-bit random
    draws with a threshold, several times cheaper on the CPU than ``bernoulli_``, which
    dominated dropout's cost. The mask is made in the input's dtype (bfloat16 under autocast),
    so the multiplication and its backward read half the bytes.

    Args:
        features: any shape, floating point.
        p: drop probability in [0, 1].
        training: identity when False (or when ``p`` is 0).
    """
    if not training or p == 0.0:
        return features
    if p >= 1.0:
        return features * 0.0
    return features * dropout_mask(features, p)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, no parameters, so the same state dict) that drops with
    `fast_dropout`. ``inplace`` is not supported."""

    def __init__(self, p: float = 0.5):
        super().__init__(p)

    def forward(self, features: Tensor) -> Tensor:
        return fast_dropout(features, self.p, self.training)


class FeedForward(nn.Module):
    """Position-wise MLP, no norm: linear_out(dropout(act(linear_in(x)))).

    (..., dim) -> (..., hidden_dim) -> (..., dim). The one feed-forward of every layer here:
    GELU in Perceiver and Flamingo, ReLU in the Transformer layers, Segment Anything's choice in
    the two-way transformer.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        *,
        activation: type[nn.Module] = nn.GELU,
        dropout: float = 0.0,
    ):
        super().__init__()
        dim, hidden_dim = check_positive(dim=dim, hidden_dim=hidden_dim)
        self.linear_in = nn.Linear(dim, hidden_dim)
        self.act = activation()
        self.dropout = FastDropout(dropout)
        self.linear_out = nn.Linear(hidden_dim, dim)

    def forward(self, features: Tensor) -> Tensor:
        p = self.dropout.p
        if self.training and 0.0 < p < 1.0 and type(self.act) is nn.ReLU:
            # relu(h) * mask == relu(h * mask) for a mask >= 0: one fresh buffer instead of two
            hidden = self.linear_in(features)
            return self.linear_out((hidden * dropout_mask(hidden, p)).relu_())
        return self.linear_out(self.dropout(self.act(self.linear_in(features))))
