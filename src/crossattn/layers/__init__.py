"""Cross-attention layers: thin modules over `crossattn.cross_attention`, one concept per file."""

from .attention import CrossAttention, PreparedContext

__all__ = ["CrossAttention", "PreparedContext"]
