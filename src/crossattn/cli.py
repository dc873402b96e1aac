"""The `crossattn` command line.

Each command lives in its own module under `crossattn.commands` with two functions,
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their command
runs, so `crossattn --help` starts without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
}


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
        parser = argparse.ArgumentParser(prog=f"crossattn {name}", description=COMMANDS[name][1])
        module.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        return int(module.run(args) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    parser.print_help()
    return 0 if not argv else 2


if __name__ == "__main__":
    raise SystemExit(main())
