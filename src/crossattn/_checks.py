"""Argument rules, each written once: every public entry point validates through these.

One rule, one owner: "a positive int" means the same in every layer, function and config.

- Integers: Python ints, NumPy integer scalars and 0-d integer torch tensors are accepted and
  returned as a plain ``int``; ``bool`` (Python, NumPy or torch) is refused everywhere, and so
  are floats, even integral ones (``8.0``).
- A wrongly typed argument raises `ArgumentTypeError`, a TypeError that is also a ValueError,
  so that callers catching either keep working; a value out of range raises ValueError.
- Every message names the argument, what was received and what is expected.

Torch-free at import (the CLI and `compute_types` use it): the tensor rules import torch when
first called, and the integer rules need no torch at all.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. A TypeError, and a ValueError too, so that code written
    against either kind of error catches it."""


def _is_bool(value: object) -> bool:
    """Python, NumPy and torch booleans (scalars and 0-d tensors)."""
    if isinstance(value, bool):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and str(dtype) in ("bool", "torch.bool")


def _describe(value: object) -> str:
    """`value` as a message shows it: its repr, and its type where the repr hides it."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    kind = type(value).__name__
    return text if kind in ("int", "float", "str", "NoneType") else f"{text} ({kind})"


def integer(
    value: object, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """`value` as an ``int`` (>= `minimum`, <= `maximum` when given).

    Accepts Python ints, NumPy integer scalars and 0-d integer torch tensors; refuses bools and
    floats with `ArgumentTypeError`, values out of range with ValueError.
    """
    if type(value) is int:  # the common case, first
        result = value
    else:
        try:
            if _is_bool(value) or getattr(value, "ndim", 0) != 0:
                raise TypeError
            result = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            raise ArgumentTypeError(
                f"{name} must be {_int_text(minimum, maximum)}, got {_describe(value)}"
            ) from None
    if (minimum is not None and result < minimum) or (maximum is not None and result > maximum):
        raise ValueError(f"{name} must be {_int_text(minimum, maximum)}, got {_describe(value)}")
    return result


def _int_text(minimum: int | None, maximum: int | None = None) -> str:
    if maximum is not None:
        return f"an int <= {maximum}" if minimum is None else f"an int in {minimum}..{maximum}"
    if minimum is None:
        return "an int"
    return {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")


def positive_int(value: object, name: str) -> int:
    """`value` as an ``int`` > 0 (see `integer` for what counts as an int)."""
    return integer(value, name, minimum=1)


def nonnegative_int(value: object, name: str) -> int:
    """`value` as an ``int`` >= 0 (see `integer` for what counts as an int)."""
    return integer(value, name, minimum=0)


def positive_ints(**values: object) -> tuple[int, ...]:
    """Each keyword argument as an ``int`` > 0, in order; the error names the first that is not."""
    return tuple(integer(v, name, minimum=1) for name, v in values.items())


def nonnegative_ints(**values: object) -> tuple[int, ...]:
    """Each keyword argument as an ``int`` >= 0, in order; the error names the first that is not."""
    return tuple(integer(v, name, minimum=0) for name, v in values.items())


def positive_int_pair(value: object, name: str, legend: str = "(H, W)") -> tuple[int, int]:
    """A tuple or list of two positive ints (a size, a grid), as plain ints; the error shows
    `legend` (``"(H, W)"``) whatever part of the pair is wrong."""
    expected = f"{name} must be {legend}: two positive ints, got {_describe(value)}"
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ArgumentTypeError(expected)
    try:
        return integer(value[0], name, minimum=1), integer(value[1], name, minimum=1)
    except ArgumentTypeError:
        raise ArgumentTypeError(expected) from None
    except ValueError:
        raise ValueError(expected) from None


def box(
    value: object, name: str, *, width: float | None = None, height: float | None = None
) -> tuple[float, float, float, float]:
    """A box ``[x0, y0, x1, y1]`` (a list, tuple, array or tensor of four finite reals) as four
    floats, with x0 < x1 and y0 < y1; inside an image of `width` x `height` pixels
    (0 <= x0, x1 <= width, 0 <= y0, y1 <= height; x1 and y1 exclusive) when those are given."""
    items = value.tolist() if hasattr(value, "tolist") else value
    try:
        if isinstance(items, (str, bytes)) or len(items) != 4:  # type: ignore[arg-type]
            raise TypeError
        x0, y0, x1, y1 = (real(v, name) for v in items)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ArgumentTypeError(
            f"{name} must be [x0, y0, x1, y1]: four finite real numbers, got {_describe(value)}"
        ) from None
    if width is None or height is None:
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"{name} must have x0 < x1 and y0 < y1, got {_describe(value)}")
    elif not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        shown = "[" + ", ".join(f"{v:g}" for v in (x0, y0, x1, y1)) + "]"
        raise ValueError(
            f"{name} {shown} must lie inside the image of width {width} and height {height} "
            f"and not be empty: 0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height} (pixels, x1 "
            "and y1 exclusive)"
        )
    return x0, y0, x1, y1


def real(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    high_open: bool = True,
    infinite: bool = False,
) -> float:
    """`value` as a finite ``float`` (ints, NumPy and 0-d torch reals accepted; bool refused),
    within ``[low, high)`` (``[low, high]`` with ``high_open=False``) where bounds are given;
    ``infinite=True`` lets ``+inf`` pass too (a "never" for a time or a period), NaN never
    passes."""
    if type(value) is float:  # the common case, first
        result = value
    else:
        try:
            if _is_bool(value) or isinstance(value, str) or getattr(value, "ndim", 0) != 0:
                raise TypeError
            result = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ArgumentTypeError(
                f"{name} must be {_interval(low, high, high_open, infinite)}, "
                f"got {_describe(value)}"
            ) from None
    inside = math.isfinite(result) or (infinite and result == math.inf)
    if low is not None:
        inside = inside and result >= low
    if high is not None:
        inside = inside and (result < high if high_open else result <= high)
    if not inside:
        bounds = _interval(low, high, high_open, infinite)
        raise ValueError(f"{name} must be {bounds.replace('a real number in', 'in')}, got "
                         f"{_describe(value)}")  # fmt: skip
    return result


def _interval(
    low: float | None, high: float | None, high_open: bool, infinite: bool = False
) -> str:
    """What `real` expects: "a finite real number", "a real number in [0, 1)"."""
    if low is None and high is None:
        return "a real number (inf included)" if infinite else "a finite real number"
    left = "(-inf" if low is None else f"[{low:g}"
    right = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
    if infinite and high is None:
        right = "inf]"
    return f"a real number in {left}, {right}"


def finite_real(value: object, name: str) -> float:
    """`value` as a finite ``float``."""
    return real(value, name)


def positive_real(value: object, name: str) -> float:
    """`value` as a finite ``float`` > 0 (an epsilon, a scale, a timeout)."""
    try:
        result = real(value, name)
    except ArgumentTypeError:
        raise ArgumentTypeError(
            f"{name} must be a positive finite real number, got {_describe(value)}"
        ) from None
    except ValueError:
        result = math.nan
    if not result > 0:
        raise ValueError(f"{name} must be a positive finite real number, got {_describe(value)}")
    return result


def unit_real(value: object, name: str) -> float:
    """A fraction, an opacity or a weight: a ``float`` in [0, 1] (both ends included)."""
    return real(value, name, low=0.0, high=1.0, high_open=False)


def probability(value: object, name: str) -> float:
    """A rate or dropout probability: a ``float`` in [0, 1)."""
    return real(value, name, low=0.0, high=1.0)


def nonnegative_real(value: object, name: str) -> float:
    """A finite ``float`` >= 0: a weight (0: off), a decay."""
    return real(value, name, low=0.0)


def boolean(value: object, name: str) -> bool:
    """`value` as a ``bool``: Python and NumPy bools and 0-d torch bool tensors; anything else,
    0 and 1 included, is an `ArgumentTypeError`."""
    if type(value) is bool:
        return value
    if _is_bool(value) and getattr(value, "ndim", 0) == 0:
        return bool(value)
    raise ArgumentTypeError(f"{name} must be a bool, got {_describe(value)}")


def choice(value: object, name: str, choices: Iterable[str]) -> str:
    """`value` if it is one of the strings `choices` (TypeError for a non-string)."""
    options = tuple(choices)
    valid = ", ".join(repr(c) for c in options)
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a string, one of {valid}; got {_describe(value)}")
    if value not in options:
        raise ValueError(f"{name} must be one of {valid}; got {value!r}")
    return value


def path(value: object, name: str) -> str:
    """`value` (str or os.PathLike) as a str; whether it exists is not asked."""
    if not isinstance(value, (str, os.PathLike)):
        raise ArgumentTypeError(
            f"{name} must be a path (str or os.PathLike), got {_describe(value)}"
        )
    return os.fspath(value)


def input_file(value: object, name: str) -> str:
    """`value` (str or os.PathLike) as a str naming an existing, readable file."""
    text = path(value, name)
    if not os.path.exists(text):
        raise ValueError(f"{name}: no such file: {text}")
    if os.path.isdir(text):
        raise ValueError(f"{name} must be a file, got a directory: {text}")
    if not os.access(text, os.R_OK):
        raise ValueError(f"{name}: cannot read {text} (permission denied)")
    return text


def output_dir(value: object, name: str) -> str:
    """`value` (str or os.PathLike) as a str naming a directory that exists or can be made: no
    file, nor below one. Whether it may be written is left to the writer."""
    text = path(value, name)
    if os.path.exists(text) and not os.path.isdir(text):
        raise ValueError(
            f"{name}: {text!r} is an existing file; expected a directory (new or existing): "
            "remove the file or choose another path"
        )
    parent = os.path.dirname(os.path.abspath(text))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{name}: cannot make the directory {text!r}: {parent!r} is a file")
    return text


def output_file(value: object, name: str) -> str:
    """`value` (str or os.PathLike) as a str naming a file that can be written: no directory,
    and its directory exists."""
    text = path(value, name)
    if os.path.isdir(text):
        raise ValueError(
            f"{name}: {text!r} is a directory; expected a file path (of a file in it, say)"
        )
    parent = os.path.dirname(text) or "."
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise ValueError(
            f"{name}: cannot write {text!r}: the directory {parent!r} {what}; create it first "
            "or choose another path"
        )
    return text


def dataclass_fields(
    instance: Any, rules: dict[str, Any], default: Any = None, *, prefix: str | None = None
) -> None:
    """Check every field of the dataclass ``instance`` by its rule in ``rules`` (``default``
    for the others; None leaves them as they are) and store what the rule returns, frozen
    dataclasses included. Errors name the field as ``Class.field`` (or ``prefix.field``)."""
    import dataclasses

    owner = prefix or type(instance).__name__
    for f in dataclasses.fields(instance):
        rule = rules.get(f.name, default)
        if rule is not None:
            value = rule(getattr(instance, f.name), f"{owner}.{f.name}")
            object.__setattr__(instance, f.name, value)


def known_fields(cls: type, data: object) -> dict[str, Any]:
    """``data`` as a dict if it is a mapping whose every key names a field of the dataclass
    ``cls`` (a config read back from a file): TypeError for another type, ValueError naming
    the unknown keys and the known ones."""
    import dataclasses
    from collections.abc import Mapping

    name = cls.__name__
    if not isinstance(data, Mapping):
        raise ArgumentTypeError(
            f"{name}.from_dict: data must be a dict of {name} fields, got {type(data).__name__}"
        )
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(repr, set(data) - names))
    if unknown:
        raise ValueError(
            f"unknown {name} keys [{', '.join(unknown)}]; expected a subset of {sorted(names)}"
        )
    return dict(data)


def token_ids(ids: Any, vocab_size: int, name: str) -> None:
    """Refuse token ids (a long tensor) outside ``0..vocab_size - 1``: checked on the CPU, where
    it costs one pass; on an accelerator the embedding kernel asserts the range itself, and
    reading it here would wait for the device every step (nor is it read while compiling)."""
    import torch

    if ids.device.type == "cpu" and ids.numel() and not torch.compiler.is_compiling():
        low, high = (int(x) for x in torch.aminmax(ids))
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name} holds ids from {low} to {high}; this vocabulary has ids "
                f"0..{vocab_size - 1}"
            )


def shape_text(shape: Iterable[int]) -> str:
    """A shape as messages show it: ``(2, 8, 16, 64)``."""
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def tensor(
    value: object,
    name: str,
    *,
    rank: int | None = None,
    legend: str = "",
    floating: bool = False,
    dtype: Any = None,
) -> Tensor:
    """`value` if it is a torch.Tensor with `rank` dimensions (`legend` names them, as
    ``"(B, S)"``), floating point when `floating`, of `dtype` when given; TypeError for the type
    or dtype, ValueError for the rank."""
    import torch

    what = f"a torch.Tensor {legend}".rstrip()
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    if rank is not None and value.dim() != rank:
        raise ValueError(
            f"{name} must be {rank}-D {legend}".rstrip() + f", got shape {shape_text(value.shape)}"
        )
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if dtype is not None and value.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {value.dtype}")
    return value


def token_mask(
    name: str,
    mask: object,
    shape: tuple[int, ...],
    legend: str,
    like: Tensor | None = None,
    like_name: str = "the inputs are",
) -> Tensor | None:
    """None, or a bool tensor of exactly `shape` (True = valid token) on `like`'s device;
    TypeError / ValueError naming `name`, the shape received and `legend` (e.g. "(B, S)").
    `like_name` says what `like` is in the device error ("the context is")."""
    if mask is None:
        return None
    import torch

    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a bool tensor {legend}, True = valid token; got "
            f"{getattr(mask, 'dtype', type(mask).__name__)}"
        )
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have shape {legend} = {tuple(shape)}, got {tuple(mask.shape)}"
        )
    if like is not None and mask.device != like.device:
        raise ValueError(f"{name} is on {mask.device} but {like_name} on {like.device}")
    return mask
