"""Backend registry and dispatch.

Each backend declares what it cannot run through `not_supported_reasons(inputs)`. A call with a
pinned backend (``backend="name"`` or `use_backend`) runs on it or raises ValueError listing its
reasons; a call with ``backend=None`` walks `preference(inputs)` and takes the first backend that
supports it. When none fits, the error lists every backend and its reasons.

The dispatch rule (`preference`), set by side-by-side measurements on a 2-core CPU (AVX-512
with bfloat16, no AMX; torch 2.13, 2 threads; `benchmarks/bench_op.py`, ``docs/backends.md``):

- CUDA and other accelerators: ``sdpa`` (PyTorch's flash, memory-efficient and cuDNN kernels);
  with weights ``lse`` (the fused kernel's output, weights rebuilt per query block from its
  log-sum-exp: no (B, H, L, S) scores beyond the map), then ``reference`` (weights that need
  gradients). A Python block loop is never chosen unless pinned.
- CPU, attention weights asked for: ``chunked`` (whole rows per tile, weights in the output's
  own pass; float32 past 8192 keys: key blocks and a second pass), then ``lse`` (a second score
  pass after the fused kernel), then ``reference``. Mean weights over the op without them,
  side by side (load average 12, ``OMP_WAIT_POLICY=PASSIVE``): (1, 8, 8192, 8192, 64) float32
  chunked 1.48x, lse 1.69x; (1, 8, 256, 65536, 64) float32 chunked 1.46x, lse 1.9x.
- CPU, bfloat16, every context length: ``chunked``. Quiet machine, ms, SDPA against chunked:
  (2, 8, 4096, 77, 64) 18.4 / 9.3; (8, 8, 512, 512, 64) with a key mask 39.7 / 32.7;
  (8, 8, 1, 1024, 64) 5.46 / 2.08; (1, 8, 256, 65536, 64) 264 / 254 with key blocks (whole
  rows since: 1.5x faster than SDPA at load average 10, passive wait); (1, 8, 8192, 8192, 64)
  979 / 823.
- CPU, float32 with a long context and few queries (S > 1024 and S >= 16 x G x L, the
  Perceiver-latents shape): ``chunked``; (1, 8, 256, 65536, 64): SDPA 315, chunked 270 ms.
- CPU, everything else (float32, float64, float16): ``sdpa``; (1, 8, 8192, 8192, 64) float32:
  SDPA 1083, chunked 1364 ms; (8, 8, 512, 512, 64): 38 / 60 ms; shorter contexts tie.

Under heavy load from other processes chunked falls 3-6x behind SDPA by default. The cause is the
OpenMP runtime's wait policy: libgomp's threads spin (300,000 rounds by default) at the end of
every parallel region, and chunked runs a few hundred regions per call where SDPA runs one; on
an oversubscribed CPU the spinning thread takes the core of the thread it waits for. With
``OMP_WAIT_POLICY=PASSIVE`` (set before the process starts) chunked stays level with SDPA under
the same load (measured at load average 15 on 2 cores, (1, 8, 256, 65536, 64) float32: chunked
over SDPA 3.61x spinning, 1.05x passive, 1.16x with ``GOMP_SPINCOUNT=1000``); see
``docs/backends.md``. So the two long-context ``chunked`` choices above (bfloat16 past 1024 keys,
and float32 with few queries) are made only when ``OMP_WAIT_POLICY=PASSIVE`` is set; without it
those calls go to ``sdpa``, which never falls that far behind.
"""

from __future__ import annotations

import os
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


def passive_wait() -> bool:
    """Whether the OpenMP threads sleep rather than spin between parallel regions
    (``OMP_WAIT_POLICY=PASSIVE`` in the environment, read when the runtime loads)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def preference(inputs: AttentionInputs) -> list[str]:
    """Backend names in the order automatic dispatch tries them (see the module docstring)."""
    if inputs.device.type != "cpu":
        return ["lse", "reference"] if inputs.return_weights else ["sdpa", "lse", "reference"]
    if inputs.return_weights:
        return ["chunked", "lse", "reference"]
    # Long contexts run a few hundred parallel regions per call in chunked: chosen only where
    # waiting threads sleep, since spinning ones make it 3-6x slower on a loaded machine.
    long_ok = passive_wait()
    short_bf16 = inputs.dtype == torch.bfloat16 and inputs.kv_len <= MAX_SINGLE_BLOCK
    long_bf16 = inputs.dtype == torch.bfloat16 and long_ok
    if short_bf16 or long_bf16 or (long_ok and _long_context_few_queries(inputs)):
        return ["chunked", "sdpa", "reference"]
    return ["sdpa", "chunked", "reference"]


def _long_context_few_queries(inputs: AttentionInputs) -> bool:
    """float32 at S > 1024 and S >= 16 x G x L, where chunked's online softmax beats SDPA."""
    rows = inputs.groups * inputs.q_len
    s = inputs.kv_len
    return inputs.dtype == torch.float32 and s > MAX_SINGLE_BLOCK and s >= 16 * rows


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
