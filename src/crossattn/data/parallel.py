"""Parallel text and word alignments: the `ParallelExample` record and the file readers.

Formats read:

* **parallel text**, one sentence pair a line, either ``source ||| target`` (the fast_align and
  awesome-align format) or ``source<TAB>target`` (TSV). ``fmt="auto"`` picks ``|||`` when the first
  line has it, else TSV.
* **alignments** in Pharaoh format, one line per pair: ``i-j`` is a sure link and ``ipj`` a possible
  one, ``i`` the source word and ``j`` the target word, 0-indexed (``one_indexed=True`` for
  1-indexed files such as the shared gold sets; ``--one-indexed`` on the command line). The
  parser, the writer and the `Link` type live in `crossattn.data.pharaoh`.

Tokens are words: each side is stripped of ASCII spaces, then split on runs of ASCII spaces
(``" "``) only. Other whitespace stays inside tokens: the Japanese-English gold set uses the
ideographic space U+3000 as a token, which ``str.split()`` would drop, shifting every index after
it. Lines end at ``"\\n"`` only (no other character splits a line), and a ``"\\r"`` before it is
removed (`decode_lines`, used for every text the commands read).

Blank lines at the end of a text file (a file ending in ``"\n\n"``) end the data; so do blank
lines of an alignment file past the last line of its text. A blank line inside the text is an
error like any other malformed line.

Malformed input raises `ParallelFormatError` (a `ValueError`) whose message starts with
``FILE:LINE:``: a missing separator, an empty side, a bad or out-of-range alignment link, or
files with different line counts. Nothing is skipped silently: ``skip_bad_lines=True`` skips the
pairs with a bad line (text or alignment), counts them in ``ParallelData.skipped`` and warns once
with the count and the first problems, each naming the file that holds the bad line (the text or
the alignments) and its line. Files with different line counts are an error even then.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .pharaoh import (
    ALIGNMENT_FORMATS,
    Link,
    ParallelFormatError,
    alignment_as,
    flip_links,
    format_pharaoh,
    parse_pharaoh,
)

__all__ = [
    "ALIGNMENT_FORMATS",
    "ParallelData",
    "ParallelExample",
    "ParallelFormatError",
    "alignment_as",
    "decode_lines",
    "format_pharaoh",
    "parse_pharaoh",
    "read_alignment_file",
    "read_parallel",
    "strip_line_end",
    "tokenize",
]

_SPACES = re.compile(" +")


@dataclass(frozen=True)
class ParallelExample:
    """One sentence pair with its (optional) gold word alignment.

    ``sure`` and ``possible`` hold 0-indexed ``(source_index, target_index)`` links. They are
    disjoint: a link is either sure (Pharaoh ``i-j``) or possible only (Pharaoh ``ipj``). The
    possible set P of the AER definition (Och & Ney 2003) is ``sure | possible``.
    """

    source: tuple[str, ...]
    target: tuple[str, ...]
    sure: frozenset[Link] = frozenset()
    possible: frozenset[Link] = frozenset()

    def pharaoh(self) -> str:
        """The alignment as one Pharaoh line, 0-indexed, sorted: ``i-j`` sure, ``ipj`` possible."""
        return format_pharaoh(self.sure, self.possible)

    def swapped(self) -> ParallelExample:
        """The pair the other way round (target to source), its gold links flipped: what a
        target-to-source model trains on."""
        return ParallelExample(
            self.target, self.source, frozenset(flip_links(self.sure)),
            frozenset(flip_links(self.possible)),
        )  # fmt: skip


@dataclass(frozen=True)
class ParallelData:
    """What `read_parallel` read: the pairs, and how many bad lines it skipped (and which).

    ``lines[k]`` is the 1-based line of ``examples[k]`` in the file (skipped lines leave gaps).
    """

    examples: list[ParallelExample]
    skipped: int = 0
    skipped_lines: list[int] = field(default_factory=list)  # 1-based line numbers
    problems: list[str] = field(default_factory=list)  # one "FILE:LINE: reason" per skip
    has_alignments: bool = False
    lines: list[int] = field(default_factory=list)  # 1-based line of each example

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[ParallelExample]:
        return iter(self.examples)


def tokenize(text: str) -> tuple[str, ...]:
    """Words of one side: strip ASCII spaces, split on runs of ASCII spaces (U+3000 stays a word)."""
    if not isinstance(text, str):
        raise TypeError(f"tokenize expects a str, got {type(text).__name__}")
    text = text.strip(" ")
    return tuple(_SPACES.split(text)) if text else ()


def strip_line_end(text: str) -> str:
    """`text` without one trailing line end: ``"\\n"``, ``"\\r\\n"`` or a lone ``"\\r"``."""
    return text.removesuffix("\n").removesuffix("\r")


def decode_lines(data: bytes, name: str | os.PathLike[str]) -> list[str]:
    """The lines of UTF-8 bytes: split at ``"\\n"`` only, a ``"\\r"`` before it removed, a
    leading BOM dropped, no line after a final ``"\\n"``. A line that is not UTF-8 raises
    `ParallelFormatError` naming ``name`` (a file, or ``"stdin"``) and the line."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    lines = []
    for k, line in enumerate(raw, 1):
        try:
            lines.append(line.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError as err:
            raise ParallelFormatError(
                name, k, f"not UTF-8 ({err.reason} at byte {err.start})"
            ) from None
    return lines


def _read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The lines of a UTF-8 file (see `decode_lines`); decoding errors name the line."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ParallelFormatError(path, None, "no such file") from None
    except IsADirectoryError:
        raise ParallelFormatError(path, None, "is a directory, not a file") from None
    return decode_lines(data, path)


def read_alignment_file(
    path: str | os.PathLike[str], *, one_indexed: bool = False
) -> list[tuple[frozenset[Link], frozenset[Link]]]:
    """Read a Pharaoh alignment file: one 0-indexed ``(sure, possible)`` pair per line."""
    return [
        parse_pharaoh(line, one_indexed=one_indexed, path=path, lineno=k)
        for k, line in enumerate(_read_lines(path), 1)
    ]


def _split_pair(line: str, fmt: str) -> tuple[str, str]:
    if fmt == "pipes":
        parts = line.split("|||")
        sep = "'|||'"
    else:
        parts = line.split("\t")
        sep = "a tab"
    if len(parts) < 2:
        raise ValueError(
            f"missing separator: expected 'source {'|||' if fmt == 'pipes' else '<TAB>'} target'"
        )
    if len(parts) > 2:
        raise ValueError(f"{len(parts) - 1} separators ({sep}) where one is expected")
    return parts[0], parts[1]


def read_parallel(
    path: str | os.PathLike[str],
    *,
    alignments: str | os.PathLike[str] | None = None,
    one_indexed: bool = False,
    skip_bad_lines: bool = False,
    fmt: str = "auto",
) -> ParallelData:
    """Read parallel text, and optionally its Pharaoh alignments.

    Args:
        path: the text, one pair a line: ``source ||| target`` or ``source<TAB>target``.
        alignments: a Pharaoh file with one line per line of ``path`` (``i-j`` sure, ``ipj``
            possible); without it the examples have empty ``sure`` and ``possible``.
        one_indexed: the alignment file counts words from 1 (default: from 0).
        skip_bad_lines: skip pairs with a malformed text or alignment line instead of raising;
            ``ParallelData.skipped`` counts them and a warning says how many.
        fmt: ``"auto"`` (``|||`` if the first line has it, else TSV), ``"pipes"`` or ``"tsv"``.

    Raises:
        ParallelFormatError: ``FILE:LINE: reason`` for the first malformed line (unless
            ``skip_bad_lines``), or for files with different line counts (always).
    """
    if fmt not in ("auto", "pipes", "tsv"):
        raise ValueError(f"fmt must be 'auto', 'pipes' or 'tsv', got {fmt!r}")
    lines = _read_lines(path)
    while lines and not lines[-1].strip(" \t"):
        lines.pop()  # blank lines at the end of the file end the data
    align_lines: list[str] | None = None
    if alignments is not None:
        align_lines = _read_lines(alignments)
        if len(align_lines) > len(lines) and not any(x.strip() for x in align_lines[len(lines) :]):
            del align_lines[len(lines) :]  # blank lines past the text's end
        if len(align_lines) != len(lines):
            raise ParallelFormatError(
                alignments,
                None,
                f"has {len(align_lines)} lines but the text {path} has {len(lines)}; "
                "they need one alignment line per sentence pair",
            )
    if fmt == "auto":
        first = next((line for line in lines if line.strip()), "")
        fmt = "pipes" if "|||" in first else "tsv"
    examples: list[ParallelExample] = []
    kept: list[int] = []
    skipped: list[int] = []
    problems: list[str] = []
    for k, line in enumerate(lines, 1):
        try:
            try:
                src_text, tgt_text = _split_pair(line, fmt)
            except ValueError as err:
                raise ParallelFormatError(path, k, str(err)) from None
            source, target = tokenize(src_text), tokenize(tgt_text)
            for side, words in (("source", source), ("target", target)):
                if not words:
                    raise ParallelFormatError(path, k, f"empty {side} side")
            sure: frozenset[Link] = frozenset()
            possible: frozenset[Link] = frozenset()
            if align_lines is not None:
                sure, possible = parse_pharaoh(
                    align_lines[k - 1],
                    one_indexed=one_indexed,
                    path=alignments,  # type: ignore[arg-type]
                    lineno=k,
                    n_source=len(source),
                    n_target=len(target),
                )
        except ParallelFormatError as err:
            if not skip_bad_lines:
                raise
            skipped.append(k)
            problems.append(str(err))
            continue
        examples.append(ParallelExample(source, target, sure, possible))
        kept.append(k)
    if skipped:
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        warnings.warn(
            f"skipped {len(skipped)} bad line(s) of {len(lines)} sentence pairs: {shown}",
            stacklevel=2,
        )
    return ParallelData(
        examples, len(skipped), skipped, problems, align_lines is not None, lines=kept
    )
