"""The `crossattn` command line.

Each command lives in its own module under `crossattn.commands` with two functions,
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their command
runs, so `crossattn --help` starts without importing torch.

Bad input ends a command the way argparse ends on a bad option: ``crossattn CMD: error: ...`` on
stderr and exit status 2. Argument ranges are checked by the ``type=`` validators below while
parsing; checks that need the files or the model raise `CommandError`, which `main` prints. Only
errors a command explicitly marks as being about its input become `CommandError` (see
`input_errors`): anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "crossattn.commands.demo",
        "train a small translator on the CPU and show its alignment",
    ),
    "train": ("crossattn.commands.train", "train an encoder-decoder translator on parallel text"),
    "translate": ("crossattn.commands.translate", "translate sentences and show their alignment"),
    "align": ("crossattn.commands.align", "word alignments from a model's cross-attention"),
    "aer": ("crossattn.commands.aer", "alignment error rate of a hypothesis against gold"),
    "view": ("crossattn.commands.view", "write the interactive HTML viewer of recorded maps"),
    "serve": ("crossattn.commands.serve", "serve a local page that translates and aligns live"),
    "export": (
        "crossattn.commands.export",
        "export a trained model for CTranslate2 or onnxruntime",
    ),
    "vqa": ("crossattn.commands.vqa", "train and run a question-answering model over images"),
}


class CommandError(Exception):
    """Bad input to a command: `main` prints ``crossattn CMD: error: MESSAGE`` and returns 2.

    The message says what is wrong and how to fix it, naming the option (``argument --data:
    ...``), what it received and what it expects.
    """


@contextlib.contextmanager
def input_errors(
    what: str,
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError),
) -> Iterator[None]:
    """Turn `errors` raised in the block (the library checking an input) into `CommandError`.

    ``what`` names the input, e.g. ``"argument --data"``; the message becomes ``what: error``.
    Wrap only the calls that read or check the user's input, so that real bugs keep a traceback.
    """
    try:
        yield
    except CommandError:
        raise
    except errors as err:
        raise CommandError(f"{what}: {err}") from err


# ---------------------------------------------------------------- argparse type= validators
def _validator(
    name: str, convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str
) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


def float_range(low: float, high: float, *, high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a float in [low, high] (or [low, high) with ``high_open``)."""
    bracket = ")" if high_open else "]"
    return _validator(
        "float_range",
        float,
        lambda v: low <= v < high if high_open else low <= v <= high,
        f"a number in [{low:g}, {high:g}{bracket}",
    )


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low."""
    return _validator(f"int_at_least_{low}", int, lambda v: v >= low, f"an integer >= {low}")


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
finite_float = _validator("finite_float", float, math.isfinite, "a finite number")
positive_float = _validator(
    "positive_float", float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0"
)
non_negative_float = _validator(
    "non_negative_float", float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"
)
port = _validator(
    "port", int, lambda v: 0 <= v <= 65535, "a TCP port in 0..65535 (0: any free port)"
)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads (default: 1 when the cores are already busy, else all)",
    )


def _default_note(action: argparse.Action) -> str:
    """What `--help` adds to an option's help: its default, or that it is required."""
    if action.required:
        return "(required)"
    if action.default is None:
        return "(default: none)"
    if isinstance(action.default, bool) and action.nargs == 0:
        return f"(default: {'on' if action.default else 'off'})"
    return "(default: %(default)s)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default: ``(default: 4)``, ``(default: off)`` for a
    flag, ``(required)``; an option whose help already says ``default`` keeps its own words, and
    one that defaults to nothing says ``(default: none)``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        if "%(default)" in text or re.search(r"\bdefault\b", text):
            return text
        return f"{text} {_default_note(action)}"


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of command `name` (imports its module), as `main` uses it."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(
        prog=f"crossattn {name}", description=COMMANDS[name][1], formatter_class=HelpFormatter
    )
    module.add_arguments(parser)
    for action in parser._actions:
        if not action.help and action.option_strings:  # argparse shows nothing without help
            action.help = _default_note(action)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossattn", description="Fast, correct and visible cross-attention for PyTorch."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        name = argv[0]
        module = importlib.import_module(COMMANDS[name][0])
        parser = command_parser(name)
        args = parser.parse_args(argv[1:])
        try:
            return int(module.run(args) or 0)
        except CommandError as err:
            print(f"{parser.prog}: error: {err}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            # The reader went away (`crossattn align ... | head`): stop quietly, as a Unix
            # filter does; point stdout at devnull so that the exit flush cannot fail again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 141  # 128 + SIGPIPE, what a shell reports for a filter killed this way
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    parser.print_help()
    return 0 if not argv else 2


if __name__ == "__main__":
    # `python -m crossattn.cli`: run the imported module's main, whose CommandError is the one
    # the commands raise (this file runs as __main__, a second copy of the module).
    from crossattn.cli import main as _main

    raise SystemExit(_main())
