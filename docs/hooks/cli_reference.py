"""MkDocs hook: the command-line reference, written from the argparse parsers at build time.

The page that holds the marker line ``<!-- cli-reference -->`` (docs/cli.md) gets, in its place,
every command's and subcommand's usage and a table of its options with their defaults, read from
`crossattn.cli.build_parser` and `crossattn.cli.command_parser`: the parsers `crossattn` itself
runs, so the page cannot drift from ``--help``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

MARKER = "<!-- cli-reference -->"
PAGE = "cli.md"
WIDTH = 96  # columns of the usage lines, fixed so that the page does not depend on the terminal


def on_config(config: Any) -> Any:
    # Document the checkout's command line, not whichever copy of crossattn is installed.
    src = str(Path(config.config_file_path).parent / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        if page.file.src_uri == PAGE:
            raise PluginError(
                f"{PAGE} lost its marker line {MARKER!r}: the CLI reference goes there"
            )
        return markdown
    return markdown.replace(MARKER, cli_reference())


def cli_reference() -> str:
    """Markdown for the top-level command and every command under it."""
    from crossattn import cli

    parts = [_parser_section(cli.build_parser(), level=3, formatter=argparse.HelpFormatter)]
    for name in cli.COMMANDS:
        parts.append(_command_section(cli.command_parser(name), level=3))
    return "\n".join(parts)


def _command_section(parser: argparse.ArgumentParser, level: int) -> str:
    text = _parser_section(parser, level, formatter=type(parser._get_formatter()))
    for sub in _subparsers(parser):
        helps = {choice.dest: choice.help for choice in sub._choices_actions}
        for name, child in sub.choices.items():
            if not child.description and helps.get(name):
                child.description = helps[name]
            text += "\n" + _command_section(child, level + 1)
    return text


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def _parser_section(parser: argparse.ArgumentParser, level: int, formatter: type) -> str:
    anchor = "cli-" + parser.prog.replace(" ", "-")  # e.g. #cli-crossattn-train
    lines = [f"{'#' * level} `{parser.prog}` {{ #{anchor} }}", ""]
    if parser.description:
        lines += [_sentence(parser.description), ""]
    lines += ["```text", _usage(parser, formatter).rstrip(), "```", ""]
    rows = [_option_row(parser, a) for a in parser._actions if _documented(a)]
    positionals = [_positional_row(parser, a) for a in parser._actions if _is_positional(a)]
    if positionals:
        lines += ["| argument | description |", "| --- | --- |", *positionals, ""]
    if rows:
        lines += ["| option | default | description |", "| --- | --- | --- |", *rows, ""]
    for sub in _subparsers(parser):
        lines += ["| command | description |", "| --- | --- |"]
        for choice in sub._choices_actions:
            lines.append(f"| `{choice.dest}` | {_cell(choice.help or '')} |")
        lines.append("")
    return "\n".join(lines)


def _usage(parser: argparse.ArgumentParser, formatter: type) -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)
    try:
        fmt = formatter(parser.prog, width=WIDTH)
        fmt.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
        return fmt.format_help()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _documented(action: argparse.Action) -> bool:
    return bool(action.option_strings) and action.help is not argparse.SUPPRESS


def _is_positional(action: argparse.Action) -> bool:
    return not action.option_strings and not isinstance(action, argparse._SubParsersAction)


def _option_row(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    flags = ", ".join(action.option_strings)
    if action.nargs != 0:
        flags += " " + _metavar(action)
    default, text = _split_default(_help(parser, action))
    return f"| `{_cell(flags)}` | {_cell(default)} | {_cell(text)} |"


def _positional_row(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return f"| `{_cell(_metavar(action))}` | {_cell(_help(parser, action))} |"


def _metavar(action: argparse.Action) -> str:
    fmt = argparse.HelpFormatter("x")
    if action.option_strings:
        return fmt._format_args(action, fmt._get_default_metavar_for_optional(action))
    return fmt._format_args(action, fmt._get_default_metavar_for_positional(action))


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The option's line of ``--help``: its help with the default the formatter adds, expanded."""
    if not action.help:
        return ""
    return parser._get_formatter()._expand_help(action)


_DEFAULT = re.compile(r"\s*\((default:?|required)\s*(.*)\)\s*$", re.DOTALL)


def _split_default(text: str) -> tuple[str, str]:
    """(default, description) from a help line that ends with ``(default: X)`` or ``(required)``."""
    match = _DEFAULT.search(text)
    if match is None:
        return "", text
    default = "required" if match.group(1) == "required" else match.group(2)
    return default, text[: match.start()]


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _cell(text: str) -> str:
    """`text` made safe for one cell of a markdown table."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
