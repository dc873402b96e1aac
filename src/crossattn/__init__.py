"""crossattn: fast, correct, complete and visible cross-attention for PyTorch.

Shape legend (the layout of `torch.nn.functional.scaled_dot_product_attention`):

    B   batch
    H   query heads            Hk  key/value heads (H divisible by Hk)
    L   query (target) length  S   key/value (source, context) length
    E   query/key head dim     Ev  value head dim

    query (B, H, L, E), key (B, Hk, S, E), value (B, Hk, S, Ev) -> out (B, H, L, Ev)
    weights (B, H, L, S), or their head mean (B, L, S)

Mask convention, everywhere: boolean True means "may attend". A key mask (B, S) marks the valid
context tokens; an attention mask is boolean or additive float, broadcastable to (B, H, L, S).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends import available_backends, register_backend, unregister_backend, use_backend
    from .functional import bidirectional_attention, cross_attention
    from .layers import (
        BidirectionalCrossAttention,
        CrossAttention,
        FiLM,
        GatedCrossAttentionBlock,
        GatedFusion,
        HierarchicalCrossAttention,
        PerceiverDecoder,
        PerceiverEncoder,
        PerceiverIO,
        PreparedContext,
        RetrievalCrossAttention,
        SelfDocAttention,
        TransformerDecoderLayer,
        TransformerEncoderLayer,
        TwoWayAttentionBlock,
        TwoWayTransformer,
    )
    from .masks import causal_mask, from_key_padding_mask, lengths_to_key_mask

# Public names are imported on first use, so that `import crossattn` (and the `crossattn`
# command line) starts without importing torch. Every name of `__all__` comes from `layers`
# except these.
_NOT_FROM_LAYERS = {
    "available_backends": "backends",
    "register_backend": "backends",
    "unregister_backend": "backends",
    "use_backend": "backends",
    "bidirectional_attention": "functional",
    "cross_attention": "functional",
    "causal_mask": "masks",
    "from_key_padding_mask": "masks",
    "lengths_to_key_mask": "masks",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'crossattn' has no attribute {name!r}")
    module = _NOT_FROM_LAYERS.get(name, "layers")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "BidirectionalCrossAttention",
    "CrossAttention",
    "FiLM",
    "GatedCrossAttentionBlock",
    "GatedFusion",
    "HierarchicalCrossAttention",
    "PerceiverDecoder",
    "PerceiverEncoder",
    "PerceiverIO",
    "PreparedContext",
    "RetrievalCrossAttention",
    "SelfDocAttention",
    "TransformerDecoderLayer",
    "TransformerEncoderLayer",
    "TwoWayAttentionBlock",
    "TwoWayTransformer",
    "available_backends",
    "bidirectional_attention",
    "causal_mask",
    "cross_attention",
    "from_key_padding_mask",
    "lengths_to_key_mask",
    "register_backend",
    "unregister_backend",
    "use_backend",
]
