"""Backend registry and dispatch.

Each backend declares what it cannot run through `not_supported_reasons(inputs)`. A call with a
pinned backend (``backend="name"`` or `use_backend`) runs on it or raises ValueError listing its
reasons; a call with ``backend=None`` walks `preference(inputs)` and takes the first backend that
supports it. When none fits, the error lists every backend and its reasons.

The dispatch rule, derived from ``benchmarks/bench_op.py`` on a shared 2-core CPU (AVX-512 with
bfloat16, no AMX; table and command in ``benchmarks/RESULTS.md``):

- CUDA and other accelerators: ``sdpa`` (PyTorch's flash, memory-efficient and cuDNN kernels),
  then ``reference``; a Python block loop is never chosen unless pinned.
- CPU, attention weights asked for: ``chunked`` (weights recomputed tile by tile, memory
  bounded), then ``reference`` (weights that need gradients).
- CPU, bfloat16, the whole context in one key block (S <= 1024: text conditioning, encoder
  contexts, decode steps): ``chunked``. SDPA's bfloat16 CPU kernel is slow there (in the
  recorded run, dispatch to chunked is 2.1x faster at (2, 8, 4096, 77, 64), 1.3x at
  (8, 8, 512, 512, 64) with a key mask, 3.2x at a (8, 8, 1, 1024, 64) decode step);
  chunked's bfloat16 matmuls around PyTorch's fused softmax are not. Under heavy load from other processes the gap closes and can reverse at S = 512 and
  at decode steps: chunked runs three parallel regions per tile where SDPA runs one.
- CPU, everything else (float32, float64, float16; bfloat16 with longer contexts): ``sdpa``. Its
  flash CPU kernel ties chunked at long bfloat16 contexts (S = 8k-65k) and is ahead of or level
  with it in float32.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from .base import AttentionInputs, Backend
from .chunked import MAX_SINGLE_BLOCK

_REGISTRY: dict[str, Backend] = {}
_DEFAULT: ContextVar[str | None] = ContextVar("crossattn_default_backend", default=None)
# Open `use_backend` blocks in all threads: a plain int read first, so that a call made with no
# block open anywhere never touches the context variable (which torch.compile cannot trace).
_OPEN = 0
_OPEN_LOCK = threading.Lock()


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    """Add a backend to the registry under ``backend.name``."""
    if not backend.name:
        raise ValueError("register_backend: the backend has no `name`")
    if backend.name in _REGISTRY and not replace:
        raise ValueError(
            f"register_backend: a backend named {backend.name!r} is already registered; "
            "pass replace=True to override it"
        )
    _REGISTRY[backend.name] = backend
    return backend


def unregister_backend(name: str) -> Backend:
    """Remove the backend registered as `name` and return it (ValueError if there is none)."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unregister_backend: no backend named {name!r} is registered; registered: "
            f"{list(_REGISTRY)}"
        )
    return _REGISTRY.pop(name)


def available_backends() -> list[str]:
    """Names of the registered backends that can run on this machine."""
    return [name for name, b in _REGISTRY.items() if b.is_available()]


def get_backend(name: str) -> Backend:
    """The backend registered as `name`; ValueError listing the available ones otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str or None, got {type(name).__name__}")
    backend = _REGISTRY.get(name)
    if backend is None or not backend.is_available():
        raise ValueError(
            f"backend={name!r} is not an available backend; available: {available_backends()}"
        )
    return backend


@contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Set the default backend for calls made inside the block (per thread and task).

    ``None`` restores automatic dispatch. Example::

        with crossattn.use_backend("reference"):
            out = crossattn.cross_attention(q, k, v)
    """
    global _OPEN
    if name is not None:
        get_backend(name)
    with _OPEN_LOCK:
        _OPEN += 1
    token = _DEFAULT.set(name)
    try:
        yield
    finally:
        _DEFAULT.reset(token)
        with _OPEN_LOCK:
            _OPEN -= 1


def current_backend() -> str | None:
    """The default set by the innermost `use_backend`, or None for automatic dispatch."""
    return _DEFAULT.get() if _OPEN else None


def preference(inputs: AttentionInputs) -> list[str]:
    """Backend names in the order automatic dispatch tries them (see the module docstring)."""
    if inputs.device.type != "cpu":
        return ["sdpa", "reference"]
    if inputs.return_weights:
        return ["chunked", "reference"]
    if inputs.dtype == torch.bfloat16 and inputs.kv_len <= MAX_SINGLE_BLOCK:
        return ["chunked", "sdpa", "reference"]
    return ["sdpa", "chunked", "reference"]


def select_backend(inputs: AttentionInputs, name: str | None = None) -> Backend:
    """The backend that runs `inputs`: the pinned one, or the first in `preference`."""
    name = name if name is not None else current_backend()
    if name is not None:
        backend = get_backend(name)
        reasons = backend.not_supported_reasons(inputs)
        if reasons:
            raise ValueError(f"backend={name!r} cannot run this call: " + "; ".join(reasons))
        return backend
    tried: list[str] = []
    for candidate in preference(inputs):
        backend = _REGISTRY.get(candidate)
        if backend is None or not backend.is_available():
            continue
        reasons = backend.not_supported_reasons(inputs)
        if not reasons:
            return backend
        tried.append(f"  {candidate}: " + "; ".join(reasons))
    listing = "\n".join(tried) or "  (no backend is registered)"
    raise ValueError(f"no backend can run this call:\n{listing}")
