"""Combine the word alignments of two directions into one (Och & Ney 2003; Koehn et al. 2003).

Both inputs are sets of ``(source_index, target_index)`` links of one sentence pair: the
forward links come from a source-to-target model, the backward links from a target-to-source
model *already flipped* to ``(source, target)`` order. The heuristics:

* ``intersect``: links in both (high precision);
* ``union``: links in either (high recall);
* ``grow-diag``: start from the intersection; repeatedly add a union link that neighbours a link
  already kept (the 8 neighbours, diagonals included) when its source or its target word is still
  unaligned, until nothing changes;
* ``grow-diag-final``: grow-diag, then add any forward link, then any backward link, whose
  source *or* target word is still unaligned;
* ``grow-diag-final-and``: the same final steps, where the source *and* the target word must both
  be unaligned.

The loops visit source words, then target words, in increasing order, as in the published
pseudo-code, so results are deterministic.

Example::

    symmetrize({(0, 0), (1, 2)}, {(0, 0), (1, 1)}, "grow-diag-final")
"""

from __future__ import annotations

from collections.abc import Iterable

from ..data.pharaoh import Link

__all__ = ["SYMMETRIZATIONS", "symmetrize"]

SYMMETRIZATIONS = ("intersect", "union", "grow-diag", "grow-diag-final", "grow-diag-final-and")
_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def _links(value: Iterable, name: str) -> set[Link]:
    try:
        links = {Link(int(i), int(j)) for i, j in value}
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an iterable of (source, target) int pairs") from None
    if any(i < 0 or j < 0 for i, j in links):
        raise ValueError(f"{name} holds a negative index: {sorted(links)[:5]}")
    return links


class _Alignment:
    """The links kept so far, with which source and target words they cover."""

    def __init__(self, links: set[Link]):
        self.links = set(links)
        self.sources = {i for i, _ in links}
        self.targets = {j for _, j in links}

    def add(self, link: Link) -> None:
        self.links.add(link)
        self.sources.add(link[0])
        self.targets.add(link[1])

    def either_free(self, link: Link) -> bool:
        return link[0] not in self.sources or link[1] not in self.targets

    def both_free(self, link: Link) -> bool:
        return link[0] not in self.sources and link[1] not in self.targets


def _grow_diag(kept: _Alignment, union: set[Link]) -> None:
    n_source = 1 + max((i for i, _ in union), default=-1)
    n_target = 1 + max((j for _, j in union), default=-1)
    added = True
    while added:
        added = False
        for i in range(n_source):
            for j in range(n_target):
                if (i, j) not in kept.links:
                    continue
                for di, dj in _NEIGHBOURS:
                    new = Link(i + di, j + dj)
                    if new in union and new not in kept.links and kept.either_free(new):
                        kept.add(new)
                        added = True


def _final(kept: _Alignment, direction: set[Link], both: bool) -> None:
    free = kept.both_free if both else kept.either_free
    for link in sorted(direction):  # source words, then target words, in order
        if link not in kept.links and free(link):
            kept.add(link)


def symmetrize(forward: Iterable, backward: Iterable, method: str = "grow-diag-final") -> set[Link]:
    """One alignment from a forward and a (flipped) backward one; see the module docstring.

    Args:
        forward: ``(source, target)`` links of the source-to-target direction.
        backward: ``(source, target)`` links of the target-to-source direction, flipped.
        method: one of `SYMMETRIZATIONS`.

    Returns:
        The set of ``(source, target)`` links.
    """
    if method not in SYMMETRIZATIONS:
        raise ValueError(f"method must be one of {SYMMETRIZATIONS}, got {method!r}")
    f, b = _links(forward, "forward"), _links(backward, "backward")
    if method == "intersect":
        return f & b
    if method == "union":
        return f | b
    kept = _Alignment(f & b)
    _grow_diag(kept, f | b)
    if method != "grow-diag":
        both = method == "grow-diag-final-and"
        _final(kept, f, both)
        _final(kept, b, both)
    return kept.links
