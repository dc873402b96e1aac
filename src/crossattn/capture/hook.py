"""The hook point inside `CrossAttention.forward`: which active recorders want this call.

`CrossAttention.forward` asks `layer_call(self)` once per call. With no recorder open (the
common case) that is one read of a module-level int, which torch.compile traces without a graph
break, and the answer is None. Otherwise it returns a
`LayerCall`: the layer then asks the op for the weights the recorders need (combined with what
its caller asked for, so nothing is computed twice) and hands them over with
`LayerCall.hand_over`, which gives back what the caller asked for.

A layer whose backend is pinned (``backend=`` on the layer, or `crossattn.use_backend`) and
whose caller asks for no weights keeps its op call exactly as it is: the pinned backend may
return no weights at all (SDPA), and recording must never break or change the model. The layer
then hands over a function that recomputes the maps from its projected queries, keys and mask
(`crossattn.capture.recompute.recompute_weights`), and `LayerCall.hand_over` calls it.

This module imports nothing from crossattn at start-up, so the layer can import it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any, Literal

from torch import Tensor

WeightsArg = bool | Literal["mean"]

# The recorders whose `with` block is open in this thread / task, innermost last.
_ACTIVE: ContextVar[tuple[Any, ...]] = ContextVar("crossattn_active_recorders", default=())
# Open recorders in all threads: a plain int read first, so that a layer with no recorder open
# anywhere never touches the context variable (which torch.compile cannot trace).
_OPEN = 0
_OPEN_LOCK = threading.Lock()


def activate(recorder: Any) -> Token:
    """Make `recorder` see every `CrossAttention` call in this context (until `deactivate`)."""
    global _OPEN
    with _OPEN_LOCK:
        _OPEN += 1
    return _ACTIVE.set(_ACTIVE.get() + (recorder,))


def deactivate(token: Token) -> None:
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
    """The recorders that want the weights of one call of one layer.

    Attributes:
        claims: ``(recorder, claim)`` pairs; `claim` is what the recorder's
            ``_claim_layer_call`` returned, with a ``.weights`` attribute ("mean" or True).
        weights: what the recorders need: "mean" or True.
        pinned: whether the call runs on a pinned backend (the layer's ``backend``, or the
            `crossattn.use_backend` default). Its op call is then not changed to return weights
            the caller did not ask for; the maps are recomputed after the forward instead.
    """

    __slots__ = ("claims", "weights", "pinned")

    def __init__(self, claims: list[tuple[Any, Any]], pinned: bool = False):
        self.claims = claims
        mode: WeightsArg = False
        for _, claim in claims:
            mode = _stronger(mode, claim.weights)
        self.weights = mode
        self.pinned = pinned

    def ask(self, caller: WeightsArg) -> WeightsArg:
        """The `return_weights` to pass to the op: covers the caller's and the recorders'.

        On a pinned backend, a caller that asks for no weights gets its call unchanged.
        """
        if self.pinned and not caller:
            return caller
        return _stronger(caller, self.weights)

    def hand_over(
        self,
        weights: Tensor | None,
        caller: WeightsArg,
        recompute: Callable[[WeightsArg], Tensor] | None = None,
    ) -> Tensor | None:
        """Give `weights` ((B, H, L, S) or (B, L, S)) to the recorders; return the caller's.

        The caller gets None when it asked for no weights, the head mean (B, L, S) when it asked
        for "mean" and the recorders needed every head, and `weights` unchanged otherwise.
        On a pinned backend with no weights asked by the caller (`ask` kept the call as it was,
        and `weights` is None), ``recompute(mode)`` gives the maps: the layer's weights
        recomputed from its queries, keys and mask ("mean": (B, L, S), True: (B, H, L, S)).
        """
        if weights is None:  # a pinned call that returned none: recompute them
            if recompute is None:
                raise RuntimeError("a pinned layer call needs a recompute function")
            weights = recompute(self.weights)
        for recorder, claim in self.claims:
            recorder._record_layer_weights(claim, weights)
        if not caller:
            return None
        if caller == "mean" and weights.dim() == 4:
            return weights.mean(dim=1)  # (B, L, S)
        return weights


def layer_call(layer: Any) -> LayerCall | None:
    """None unless an active recorder wants the weights of this call of `layer`."""
    if not _OPEN:
        return None
    recorders = _ACTIVE.get()
    if not recorders:
        return None
    claims = []
    for recorder in recorders:
        claim = recorder._claim_layer_call(layer)
        if claim is not None:
            claims.append((recorder, claim))
    if not claims:
        return None
    from ..backends.registry import current_backend

    pinned = getattr(layer, "backend", None) is not None or current_backend() is not None
    return LayerCall(claims, pinned)
