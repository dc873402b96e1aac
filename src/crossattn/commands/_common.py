"""Checks shared by the commands: model directories, parallel text, output paths.

Each raises `crossattn.cli.CommandError` with a message naming the option, what it received and
what it expects. Heavy modules are imported inside the functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..cli import CommandError, input_errors

#: the reverse (target-to-source) model's directory inside a model directory: written by
#: ``train --both-directions`` and ``demo``, found by ``align``
REVERSE_DIR = "reverse"


def brief(err: BaseException, limit: int = 240) -> str:
    """``Type: message`` of a third-party loader's error, on one line and at most ~limit chars."""
    text = str(err)
    if "WeightsUnpickler error:" in text:  # torch.load's long advice; keep the reason
        text = text.split("WeightsUnpickler error:", 1)[1]
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def load_translator(path: str, option: str = "--model", compute_type: str = "float32") -> Any:
    """`Translator.load(path, compute_type=...)`; a missing, incomplete or corrupt directory, or
    a compute type this machine cannot run, is a clean error."""
    if not os.path.exists(path):
        raise CommandError(
            f"argument {option}: no such directory: {path!r}; expected a model directory "
            "written by crossattn train (or crossattn demo)"
        )
    if not os.path.isdir(path):
        raise CommandError(
            f"argument {option}: {path!r} is a file; expected a model directory written by "
            "crossattn train (or crossattn demo)"
        )
    from safetensors import SafetensorError

    from ..models import Translator
    from ._compute_type import check_compute_type_runs

    check_compute_type_runs(compute_type)
    try:
        return Translator.load(path, compute_type=compute_type)
    except FileNotFoundError as err:  # says which file is missing
        raise CommandError(f"argument {option}: {err}") from err
    # malformed JSON or config, unreadable weights, weights of another shape
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        raise CommandError(
            f"argument {option}: cannot load the model in {path!r} ({brief(err)}); expected an "
            "intact model directory written by crossattn train"
        ) from err


def read_pairs(path: str, option: str = "--data", **kwargs: Any) -> Any:
    """`read_parallel(path, **kwargs)`; a missing file or a malformed line is a clean error."""
    from ..data.parallel import read_parallel

    with input_errors(f"argument {option}"):
        return read_parallel(path, **kwargs)


def check_output_dir(path: str, option: str = "--out") -> None:
    """`path` can be made (or already is) a directory (`crossattn._checks.output_dir`)."""
    from .._checks import output_dir

    _as_command_error(output_dir, path, option)


def check_output_file(path: str, option: str = "--out") -> None:
    """`path` can be written as a file (`crossattn._checks.output_file`)."""
    from .._checks import output_file

    _as_command_error(output_file, path, option)


def check_input_file(path: str, option: str, expected: str) -> None:
    """`path` names an existing, readable file (`crossattn._checks.input_file`); the error
    ends with what the option ``expected`` ("a text file")."""
    from .._checks import input_file

    _as_command_error(input_file, path, option, f"; expected {expected}")


def _as_command_error(
    rule: Callable[[Any, str], Any], path: str, option: str, more: str = ""
) -> None:
    """`rule(path, "argument OPTION")`, its ValueError raised as a `CommandError` (its message
    and then `more`)."""
    try:
        rule(path, f"argument {option}")
    except ValueError as err:
        raise CommandError(f"{err}{more}") from err
