"""Cross-attention layers: thin modules over `crossattn.cross_attention`, one concept per file."""

from .attention import CrossAttention, PreparedContext
from .bidirectional import BidirectionalCrossAttention
from .film import FiLM
from .fusion import GatedFusion
from .gated import GatedCrossAttentionBlock
from .hierarchical import HierarchicalCrossAttention
from .perceiver import PerceiverDecoder, PerceiverEncoder, PerceiverIO
from .retrieval import RetrievalCrossAttention
from .selfdoc import SelfDocAttention
from .transformer import DecoderLayerOutput, TransformerDecoderLayer, TransformerEncoderLayer
from .two_way import TwoWayAttentionBlock, TwoWayTransformer

__all__ = [
    "BidirectionalCrossAttention",
    "CrossAttention",
    "DecoderLayerOutput",
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
]
