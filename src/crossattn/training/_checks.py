"""The argument rules of `crossattn.training`, in one place: ints, numbers, bools and paths.

An int is a Python int or a numpy / torch integer scalar (anything with ``__index__``); a bool
is never an int. A number is a real number, ints included, bools refused. Each check names the
argument (``owner.name``), what it received and what it expects, and returns the value
normalised (``int``, ``float``, ``str`` path).
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Callable
from numbers import Real
from typing import Any


def as_int(name: str, value: Any, low: int | None = None, optional: bool = False) -> int | None:
    """``value`` as an ``int`` (``None`` passes when ``optional``): `TypeError` unless it is an
    integer (numpy and torch integer scalars included, bools refused), `ValueError` when it is
    below ``low``."""
    if value is None and optional:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an int{' or None' if optional else ''}, got {value!r}"
        ) from None
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def as_number(
    name: str,
    value: Any,
    expected: str,
    ok: Callable[[float], bool],
    optional: bool = False,
) -> float | None:
    """``value`` as a ``float`` (``None`` passes when ``optional``): `TypeError` unless it is a
    real number (bools refused), `ValueError` (saying ``expected``) unless ``ok(value)``; NaN
    fails every range written as comparisons."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number{' or None' if optional else ''}, got {value!r}")
    value = float(value)
    if not ok(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def as_bool(name: str, value: Any) -> bool:
    """``value`` itself when it is a bool, else `TypeError`."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def as_path(name: str, value: Any, optional: bool = False) -> str | None:
    """``value`` (a ``str`` or ``os.PathLike``) as a ``str``; ``None`` passes when ``optional``."""
    if value is None and optional:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")
    return os.fspath(value)


def as_choice(name: str, value: Any, choices: tuple[str, ...], optional: bool = False) -> Any:
    """``value`` when it is one of ``choices`` (or ``None`` when ``optional``), else `ValueError`."""
    if (value is None and optional) or value in choices:
        return value
    raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


# Checks as values, for tables and dataclass fields: ``check(name, value) -> value``.
Check = Callable[[str, Any], Any]


def integer(low: int | None = None, optional: bool = False) -> Check:
    """The `as_int` check with these bounds."""
    return lambda name, value: as_int(name, value, low, optional)


def number(expected: str, ok: Callable[[float], bool], optional: bool = False) -> Check:
    """The `as_number` check with this range."""
    return lambda name, value: as_number(name, value, expected, ok, optional)


def path(optional: bool = False) -> Check:
    """The `as_path` check."""
    return lambda name, value: as_path(name, value, optional)


def choice(choices: tuple[str, ...], optional: bool = False) -> Check:
    """The `as_choice` check with these choices."""
    return lambda name, value: as_choice(name, value, choices, optional)


def instance(kind: type) -> Check:
    """``value`` itself when it is a ``kind`` (a bool: `as_bool`), else `TypeError`."""
    if kind is bool:
        return as_bool

    def check(name: str, value: Any) -> Any:
        if not isinstance(value, kind):
            raise TypeError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
        return value

    return check


def finite_positive(v: float) -> bool:
    return 0 < v < math.inf


FINITE_POSITIVE = number("a finite number > 0", finite_positive)
FINITE_NON_NEGATIVE = number("a finite number >= 0", lambda v: 0 <= v < math.inf)
PROBABILITY = number("in [0, 1)", lambda v: 0 <= v < 1)
SECONDS = number("a number >= 0 (or math.inf)", lambda v: v >= 0)
