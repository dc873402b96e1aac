"""Backend registry and dispatch: the one place that chooses the backend of a call.

Each backend declares what it cannot run (`Backend.not_supported_reasons(inputs)`) and where it
ranks (`Backend.rank(inputs)`: lower first, None never automatic; the built-in ranks and the
measurements behind them are in `crossattn.backends.policy`). A call with a pinned backend
(``backend="name"`` or `use_backend`) runs on it or raises ValueError with its reasons; a call
with ``backend=None`` walks every registered backend, those added with `register_backend`
included, in rank order (ties in registration order) and takes the first that supports it. When
none fits, the error shows the call's shapes, dtypes and device and every backend's reasons.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .base import AttentionInputs, Backend

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
    """Names of the available backends in the order automatic dispatch tries them for `inputs`
    (rank order; backends whose rank is None are left out)."""
    return [backend.name for backend in _ranked(inputs)]


def _ranked(inputs: AttentionInputs) -> list[Backend]:
    """The available backends that rank for `inputs`, lowest rank first, ties in registration
    order. Reads shapes, dtypes and devices only: no host reads, no graph break."""
    ranked = []
    for order, backend in enumerate(_REGISTRY.values()):
        if backend.is_available():
            rank = backend.rank(inputs)
            if rank is not None:
                ranked.append((rank, order, backend))
    ranked.sort(key=lambda entry: (entry[0], entry[1]))
    return [backend for _, _, backend in ranked]


def select_backend(inputs: AttentionInputs, name: str | None = None) -> Backend:
    """The backend that runs `inputs`: the pinned one, or the first supporting one in rank
    order (see the module docstring)."""
    name = name if name is not None else current_backend()
    if name is not None:
        backend = get_backend(name)
        reasons = backend.not_supported_reasons(inputs)
        if reasons:
            raise ValueError(
                f"backend={name!r} cannot run this call: " + "; ".join(reasons)
                + f"\n  the call: {inputs.describe()}"
            )  # fmt: skip
        return backend
    for backend in _ranked(inputs):
        if not backend.not_supported_reasons(inputs):
            return backend
    raise ValueError(_refusal(inputs))


def _refusal(inputs: AttentionInputs) -> str:
    """The error of a call that no backend can run: each backend's reasons, then the call."""
    lines = []
    for name, backend in _REGISTRY.items():
        if not backend.is_available():
            lines.append(f"  {name}: not available on this machine")
            continue
        reasons = backend.not_supported_reasons(inputs)
        if not reasons:  # it could run the call but ranks None for it
            reasons = [f"never chosen automatically for this call; pin it (backend={name!r})"]
        lines.append(f"  {name}: " + "; ".join(reasons))
    listing = "\n".join(lines) or "  (no backend is registered)"
    return f"no backend can run this call:\n{listing}\n  the call: {inputs.describe()}"
