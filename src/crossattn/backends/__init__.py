"""Cross-attention backends: one file per backend, a registry, and dispatch."""

from .base import AttentionInputs, Backend
from .chunked import ChunkedBackend
from .int8 import Int8Backend, Int8Tensor, quantize_rows
from .lse import LSEBackend
from .reference import ReferenceBackend
from .registry import (
    available_backends,
    current_backend,
    get_backend,
    preference,
    register_backend,
    select_backend,
    unregister_backend,
    use_backend,
)
from .sdpa import SDPABackend

register_backend(ReferenceBackend())
register_backend(SDPABackend())
register_backend(ChunkedBackend())
register_backend(LSEBackend())
register_backend(Int8Backend())

__all__ = [
    "AttentionInputs",
    "Backend",
    "ChunkedBackend",
    "Int8Backend",
    "Int8Tensor",
    "ReferenceBackend",
    "SDPABackend",
    "available_backends",
    "current_backend",
    "get_backend",
    "preference",
    "quantize_rows",
    "register_backend",
    "unregister_backend",
    "select_backend",
    "use_backend",
]
