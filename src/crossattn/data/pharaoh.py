"""Word links and the Pharaoh format: the one `Link` type, and the one parser and writer.

A **link** joins source word ``source`` to target word ``target``, both 0-indexed, always in
that order (as Pharaoh writes it, and as the rows and columns of a map are *not*: a map's row is
the target). `Link` is a named pair, so it compares and hashes as the plain tuple
``(source, target)``: sets of links and sets of ``(i, j)`` tuples mix freely. A *possible* link
(gold that a word may have, Och & Ney 2003) is a `PossibleLink`, the same pair with
``sure == False``; in sets the two are the same link.

The **Pharaoh format** writes one sentence pair's links on a line: ``i-j`` a sure link and
``ipj`` a possible one, ``i`` the source word, ASCII digits only, e.g. ``"0-0 1-2 2p1"``.
`parse_pharaoh` reads a line into disjoint ``(sure, possible)`` sets (a link given as both is
sure), `format_pharaoh` and `alignment_as` write them. Malformed input raises
`ParallelFormatError` (a `ValueError`) whose message starts with ``FILE:LINE:``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "ALIGNMENT_FORMATS",
    "Link",
    "ParallelFormatError",
    "PossibleLink",
    "alignment_as",
    "flip_links",
    "format_pharaoh",
    "parse_pharaoh",
    "read_link",
]

_LINK = re.compile(r"([0-9]+)(-|[^-0-9])([0-9]+)")  # ASCII digits only (\d matches "\u0661")


class Link(NamedTuple):
    """A sure word link: source word ``source`` to target word ``target`` (0-indexed)."""

    source: int
    target: int

    @property
    def sure(self) -> bool:
        """True: a sure link (Pharaoh ``i-j``); a `PossibleLink` says False."""
        return True


class PossibleLink(Link):
    """A possible link (Pharaoh ``ipj``): a `Link` whose ``sure`` is False."""

    __slots__ = ()

    @property
    def sure(self) -> bool:
        return False


class ParallelFormatError(ValueError):
    """Malformed parallel text or alignments; ``path`` and ``line`` (1-based) say where."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        self.path, self.line, self.reason = str(path), line, message
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


def read_link(item: str, possible: str = "p", base: int = 0) -> Link | None:
    """The link one Pharaoh item writes (``"3-4"``, or ``"3p4"`` with ``p`` among the
    ``possible`` marks), counted from ``base``; None when ``item`` is not a link. An index below
    ``base`` is returned as is (negative), for the caller to refuse."""
    m = _LINK.fullmatch(item)
    if m is None or (m.group(2) != "-" and m.group(2) not in possible):
        return None
    i, j = int(m.group(1)) - base, int(m.group(3)) - base
    return Link(i, j) if m.group(2) == "-" else PossibleLink(i, j)


def parse_pharaoh(
    line: str,
    *,
    one_indexed: bool = False,
    path: str | os.PathLike[str] = "<string>",
    lineno: int | None = None,
    n_source: int | None = None,
    n_target: int | None = None,
) -> tuple[frozenset[Link], frozenset[Link]]:
    """Parse one Pharaoh line into 0-indexed ``(sure, possible)`` link sets (disjoint).

    ``n_source`` / ``n_target``, when given, bound the indices (after the 1-indexed shift).
    Raises `ParallelFormatError` naming ``path`` and ``lineno`` for a malformed link, an index
    below the base (0 in a 1-indexed file) or an index out of range.
    """
    sure: set[Link] = set()
    possible: set[Link] = set()
    for item in line.split():
        link = read_link(item, base=1 if one_indexed else 0)
        if link is None:
            raise ParallelFormatError(
                path,
                lineno,
                f"bad alignment link {item!r}: expected 'i-j' (sure) or 'ipj' (possible)",
            )
        i, j = link
        if i < 0 or j < 0:
            raise ParallelFormatError(
                path,
                lineno,
                f"alignment link {item!r} has index 0 but the file is read as 1-indexed",
            )
        if (n_source is not None and i >= n_source) or (n_target is not None and j >= n_target):
            hint = (
                ""
                if one_indexed
                else " (is the file 1-indexed? pass one_indexed=True, or --one-indexed on the "
                "command line)"
            )
            raise ParallelFormatError(
                path,
                lineno,
                f"alignment link {item!r} is out of range for a pair of {n_source} source and "
                f"{n_target} target words ({'1' if one_indexed else '0'}-indexed){hint}",
            )
        (sure if link.sure else possible).add(link)
    return frozenset(sure), frozenset(possible - sure)


def format_pharaoh(sure: Iterable[tuple[int, int]], possible: Iterable[tuple[int, int]] = ()) -> str:  # fmt: skip
    """One Pharaoh line, 0-indexed and sorted: ``i-j`` for sure links, ``ipj`` for possible ones
    (a link in both sets is written once, as sure)."""
    sure = set(sure)
    links = [(i, j, "-") for i, j in sure] + [
        (i, j, "p") for i, j in set(possible) if (i, j) not in sure
    ]
    return " ".join(f"{i}{sep}{j}" for i, j, sep in sorted(links))


ALIGNMENT_FORMATS = ("pharaoh", "pairs")


def alignment_as(links: Iterable[tuple[int, int]], fmt: str = "pharaoh") -> str | list[list[int]]:
    """Word links ``(i, j)`` (source i, target j, 0-indexed) for JSON, sorted: ``"pharaoh"``
    gives one Pharaoh line ``"0-0 1-2"``, ``"pairs"`` a list ``[[0, 0], [1, 2]]``."""
    if fmt not in ALIGNMENT_FORMATS:
        raise ValueError(f"alignment format must be one of {ALIGNMENT_FORMATS}, got {fmt!r}")
    ordered = sorted((int(i), int(j)) for i, j in links)
    if fmt == "pairs":
        return [[i, j] for i, j in ordered]
    return " ".join(f"{i}-{j}" for i, j in ordered)


def flip_links(links: Iterable[tuple[int, int]]) -> set[Link]:
    """Links of the other direction: ``(j, i)`` for each ``(i, j)``, e.g. the links a
    target-to-source model read, as (source, target) links of the pair."""
    return {Link(int(j), int(i)) for i, j in links}
