"""The arguments of a module call, by name, as a forward hook sees them."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

_SIGNATURES: dict[type, inspect.Signature] = {}


def call_arguments(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Map a call's positional and keyword arguments to the names of `module.forward`.

    Defaults are filled in; extra keyword arguments (``**kwargs``) are merged in by name.
    """
    cls = type(module)
    sig = _SIGNATURES.get(cls)
    if sig is None:
        sig = inspect.signature(cls.forward)
        _SIGNATURES[cls] = sig
    bound = sig.bind_partial(module, *args, **kwargs)
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        param = sig.parameters[name]
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif param.kind is not inspect.Parameter.VAR_POSITIONAL:
            out[name] = value
    return out


def claimed_cross_call(
    recorder: Any,
    name: str,
    kind: str,
    module: nn.Module,
    args: tuple,
    kwargs: dict[str, Any],
    context_arg: str,
) -> tuple[dict[str, Any], Any] | None:
    """``(arguments by name, the recorder's claim)`` for a call of `module` that passes
    `context_arg` (a cross-attention call) and that the recorder keeps; None otherwise
    (self-attention calls are not recorded)."""
    call = call_arguments(module, args, kwargs)
    if call.get(context_arg) is None:
        return None
    claim = recorder._claim(name, kind)
    return None if claim is None else (call, claim)
