"""The hook protocol between attention layers and the tools that record their maps.

A layer that computes attention asks `layer_call(self)` once per call. With no observer open
(the common case) that is one read of a module-level int, which torch.compile traces without a
graph break, and the answer is None. Otherwise it returns a `LayerCall`: the layer asks its op
for the weights the observers need (`LayerCall.ask`, combined with what its own caller asked
for, so nothing is computed twice), then hands over one `AttentionCall` -- its projected queries
and keys, its masks and scale, and the weights when the op returned them -- with
`LayerCall.hand_over`, which gives back what its caller asked for.

A layer whose backend is pinned (``backend=`` on the layer, or `crossattn.use_backend`) and
whose caller asks for no weights keeps its op call exactly as it is: the pinned backend may
return no weights at all (SDPA), and recording must never break or change the model. It then
hands over no weights, and the observer recomputes them from the queries, keys and masks of the
`AttentionCall`. A layer whose op never returns the map it computes (the hierarchical layer's
gathered blocks) hands over its queries and keys with a mask of what each query saw; a layer
with several maps and no `CrossAttention` of its own lists them in ``attention_parts`` and
hands each over with `hand_over_maps`.

Observers implement `AttentionObserver` (`crossattn.capture.AttentionRecorder` does); this
module knows nothing of them, so the layers import nothing from the tools above them.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Literal, Protocol

from torch import Tensor, nn

from ..backends.registry import current_backend

WeightsArg = bool | Literal["mean"]


@dataclass(frozen=True)
class AttentionCall:
    """What one call of an attention layer hands to its observers.

    Attributes:
        layer: the `CrossAttention` (or other module) that owns the projections.
        query: (B, H, L, E) projected (and normalised) queries.
        key: (B, Hk, S, E) keys (H a multiple of Hk), zero at padded tokens.
        scale: the score scale.
        attn_mask: bool (True = may attend) or additive float, broadcastable to (B, H, L, S)
            with 4 dims; or None.
        key_mask: (B, S) bool, True = valid context token; or None.
        weights: the weights the op returned in this call, (B, H, L, S) or their head mean
            (B, L, S); None when the op returned none (observers recompute them).
    """

    layer: nn.Module
    query: Tensor
    key: Tensor
    scale: float
    attn_mask: Tensor | None = None
    key_mask: Tensor | None = None
    weights: Tensor | None = None


class Claim(Protocol):
    """An observer's answer to one layer call it wants: what weights it needs."""

    weights: WeightsArg  # "mean" (B, L, S) or True (B, H, L, S)


class AttentionObserver(Protocol):
    """What a recorder implements to see layer calls (see `observe`)."""

    def claim_call(self, layer: nn.Module, part: str | None = None) -> Claim | None:
        """A claim when this call of `layer` (and of its map `part`, for a layer that computes
        several, see `hand_over_maps`) is to be recorded, else None."""

    def record_call(self, claim: Claim, call: AttentionCall) -> None:
        """Keep the maps of a claimed call."""


# The observers whose `with` block is open in this thread / task, innermost last.
_ACTIVE: ContextVar[tuple[AttentionObserver, ...]] = ContextVar(
    "crossattn_active_observers", default=()
)
# Open observers in all threads: a plain int read first, so that a layer with no observer open
# anywhere never touches the context variable (which torch.compile cannot trace).
_OPEN = 0
_OPEN_LOCK = threading.Lock()


def activate(observer: AttentionObserver) -> Token:
    """Make `observer` see every layer call in this context (until `deactivate`)."""
    global _OPEN
    with _OPEN_LOCK:
        _OPEN += 1
    return _ACTIVE.set(_ACTIVE.get() + (observer,))


def deactivate(token: Token) -> None:
    """Undo the `activate` that returned `token`."""
    global _OPEN
    _ACTIVE.reset(token)
    with _OPEN_LOCK:
        _OPEN -= 1


def _stronger(a: WeightsArg, b: WeightsArg) -> WeightsArg:
    """True (every head) covers "mean", which covers False."""
    if a is True or b is True:
        return True
    return "mean" if "mean" in (a, b) else False


class LayerCall:
    """The observers that want the maps of one call of one layer.

    Attributes:
        claims: ``(observer, claim)`` pairs.
        weights: what the observers need: "mean" or True.
        pinned: whether the call runs on a pinned backend (the layer's ``backend``, or the
            `crossattn.use_backend` default). Its op call is then not changed to return weights
            its caller did not ask for; observers recompute the maps instead.
    """

    __slots__ = ("claims", "weights", "pinned")

    def __init__(self, claims: list[tuple[AttentionObserver, Claim]], pinned: bool = False):
        self.claims = claims
        mode: WeightsArg = False
        for _, claim in claims:
            mode = _stronger(mode, claim.weights)
        self.weights = mode
        self.pinned = pinned

    def ask(self, caller: WeightsArg) -> WeightsArg:
        """The `return_weights` to pass to the op: covers the caller's and the observers'.

        On a pinned backend, a caller that asks for no weights gets its call unchanged.
        """
        if self.pinned and not caller:
            return caller
        return _stronger(caller, self.weights)

    def hand_over(self, call: AttentionCall, caller: WeightsArg) -> Tensor | None:
        """Give `call` to the observers; return the weights the layer's caller asked for.

        The caller gets None when it asked for none, the head mean (B, L, S) when it asked for
        "mean" and the observers needed every head, and ``call.weights`` otherwise.
        """
        for observer, claim in self.claims:
            observer.record_call(claim, call)
        weights = call.weights
        if not caller or weights is None:
            return None
        if caller == "mean" and weights.dim() == 4:
            return weights.mean(dim=1)  # (B, L, S)
        return weights


def layer_call(layer: nn.Module, part: str | None = None) -> LayerCall | None:
    """None unless an open observer wants the maps of this call of `layer` (its map `part`)."""
    if not _OPEN:
        return None
    observers = _ACTIVE.get()
    if not observers:
        return None
    claims = []
    for observer in observers:
        claim = observer.claim_call(layer, part)
        if claim is not None:
            claims.append((observer, claim))
    if not claims:
        return None
    pinned = getattr(layer, "backend", None) is not None or current_backend() is not None
    return LayerCall(claims, pinned)


def hand_over_maps(
    layer: nn.Module,
    part: str,
    query: Tensor,
    key: Tensor,
    *,
    scale: float | None = None,
    key_mask: Tensor | None = None,
    query_mask: Tensor | None = None,
) -> None:
    """For a layer that computes several maps with no `CrossAttention` of its own (it lists
    their names in ``layer.attention_parts``): give the queries (B, H, L, E) and keys
    (B, Hk, S, E) of map `part` to the open observers that want it. `key_mask` (B, S) and
    `query_mask` (B, L) are bool, True = valid token; a padded query's row is 0. `scale`
    defaults to 1 / sqrt(E). Costs one int read when nothing records."""
    recording = layer_call(layer, part)
    if recording is None:
        return
    rows = None if query_mask is None else query_mask[:, None, :, None]  # (B, 1, L, 1)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    recording.hand_over(AttentionCall(layer, query, key, scale, rows, key_mask), False)
