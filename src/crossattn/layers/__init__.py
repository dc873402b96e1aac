"""Cross-attention layers: thin modules over `crossattn.cross_attention`, one concept per file."""

from .attention import CrossAttention, PreparedContext
from .two_way import TwoWayAttentionBlock, TwoWayTransformer

__all__ = ["CrossAttention", "PreparedContext", "TwoWayAttentionBlock", "TwoWayTransformer"]
