"""Which layers and which calls (steps, timesteps) a recorder keeps."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

from .. import _checks

LayersArg = None | str | re.Pattern | Collection[str] | Callable[[str], bool]
StepsArg = None | int | range | slice | Collection[int] | Callable[[int], bool]
TimestepsArg = None | Collection[float] | Callable[[float], bool]


def layer_selector(layers: LayersArg) -> tuple[Callable[[str], bool], frozenset[str] | None]:
    """(predicate on layer names, the exact names asked for or None).

    None: every layer. A str or compiled pattern: layers whose name matches it (`re.search`).
    A collection of str: exactly those names. A callable: layers for which it returns True.
    """
    if layers is None:
        return (lambda name: True), None
    if isinstance(layers, str):
        try:
            pattern = re.compile(layers)
        except re.error as err:
            raise ValueError(f"layers={layers!r} is not a valid regular expression: {err}") from err
        return (lambda name: pattern.search(name) is not None), None
    if isinstance(layers, re.Pattern):
        return (lambda name: layers.search(name) is not None), None
    if callable(layers):
        return layers, None
    if isinstance(layers, Collection) and all(isinstance(n, str) for n in layers):
        names = frozenset(layers)
        return names.__contains__, names
    raise TypeError(
        "layers must be None, a regular expression, a list of layer names or a callable "
        f"name -> bool, got {type(layers).__name__}"
    )


def _negative(steps: object) -> ValueError:
    return ValueError(
        f"steps={steps!r}: steps are call indices counted from 0 (each layer's first call in "
        "the block); negative indices, counted from the end, are not supported, since the "
        "number of calls is not known while recording"
    )


def _index(value: object) -> int | None:
    """`value` as an int when it is one (`crossattn._checks.integer`: Python, NumPy and 0-d
    torch ints; no bools), else None."""
    try:
        return _checks.integer(value, "steps")
    except _checks.ArgumentTypeError:
        return None


def step_selector(steps: StepsArg) -> Callable[[int], bool] | None:
    """Predicate on the 0-based call index of a layer, or None for every call.

    Indices are non-negative: a negative int, a slice with a negative start, stop or step,
    and ints or a range holding a negative value are refused (ValueError).
    """
    if steps is None:
        return None
    step = _index(steps)
    if step is not None:
        if step < 0:
            raise _negative(steps)
        return lambda i: i == step
    if isinstance(steps, slice):
        raw = (steps.start, steps.stop, steps.step)
        start, stop, stride = (None if p is None else _index(p) for p in raw)
        if any(p is not None and q is None for p, q in zip(raw, (start, stop, stride))):
            raise TypeError(f"steps={steps!r}: a slice of steps needs int start, stop and step")
        start, stride = start or 0, 1 if stride is None else stride
        if stride <= 0:
            raise ValueError(f"steps={steps!r}: a slice of steps needs a positive step")
        if start < 0 or (stop is not None and stop < 0):
            raise _negative(steps)
        if stop is None:
            return lambda i: i >= start and (i - start) % stride == 0
        return set(range(start, stop, stride)).__contains__
    if callable(steps):
        return steps
    if isinstance(steps, (range, Collection)) and not isinstance(steps, str):
        wanted = {_index(i) for i in steps}
        if None not in wanted:
            if any(i < 0 for i in wanted):  # type: ignore[operator]
                raise _negative(steps)
            return wanted.__contains__
    raise TypeError(
        f"steps must be None, an int, a range, a slice, ints or a callable, got {steps!r}"
    )


def timestep_selector(timesteps: TimestepsArg) -> Callable[[float], bool] | None:
    """Predicate on a diffusion timestep value, or None for every timestep."""
    if timesteps is None:
        return None
    if callable(timesteps):
        return timesteps
    if isinstance(timesteps, Collection) and not isinstance(timesteps, str):
        wanted = {float(t) for t in timesteps}
        return lambda t: float(t) in wanted
    raise TypeError(
        f"timesteps must be None, a collection of numbers or a callable, got {timesteps!r}"
    )
