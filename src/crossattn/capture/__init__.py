"""Capture cross-attention maps from any model at bounded memory.

`AttentionRecorder` records, by layer name, the maps of crossattn layers, of
`torch.nn.MultiheadAttention`, of transformers encoder-decoder models (``generate()``
included) and of diffusers UNets, reducing them as they are recorded (head mean or chosen
heads, chosen layers and steps, top-k per query, an image grid, a byte budget). Maps are
(B, L, S) head means, or (B, heads, L, S) with heads kept: L query (target) positions, S context
(source) positions.
"""

from .recorder import AttentionRecorder, CaptureBudgetError
from .reduce import to_dense
from .storage import read_header

__all__ = ["AttentionRecorder", "CaptureBudgetError", "read_header", "to_dense"]
