"""The one link type and Pharaoh parser (`crossattn.data.pharaoh`), as data, align and viz use it."""

from __future__ import annotations

import pytest
import torch

from crossattn.align import extract_alignment
from crossattn.align.symmetrize import symmetrize
from crossattn.data import Link, ParallelFormatError, PossibleLink, parse_pharaoh
from crossattn.data.pharaoh import flip_links, format_pharaoh, read_link
from crossattn.viz._record import as_record, normalize_links


def test_a_link_is_a_source_target_pair():
    link = Link(2, 5)
    assert (link.source, link.target, link.sure) == (2, 5, True)
    assert link == (2, 5) and hash(link) == hash((2, 5))
    possible = PossibleLink(2, 5)
    assert not possible.sure and possible == link and {possible} == {(2, 5)}
    assert Link(source=1, target=0) == (1, 0)


@pytest.mark.parametrize(
    "item, marks, expected",
    [
        ("3-4", "p", Link(3, 4)),
        ("3p4", "p", PossibleLink(3, 4)),
        ("3?4", "p", None),
        ("3?4", "pP?", PossibleLink(3, 4)),
        ("3P4", "pP?", PossibleLink(3, 4)),
        ("3:4", "pP?", None),
        ("3-", "p", None),
        ("\u0661-0", "p", None),  # ASCII digits only
        ("03-10", "p", Link(3, 10)),
    ],
)
def test_read_link(item, marks, expected):
    link = read_link(item, possible=marks)
    assert link == expected
    if expected is not None:
        assert type(link) is type(expected)


def test_parse_pharaoh_gives_links_and_sure_wins():
    sure, possible = parse_pharaoh("0-0 2p1 1-2 2-1 3p3")
    assert sure == {(0, 0), (1, 2), (2, 1)} and possible == {(3, 3)}
    assert all(type(k) is Link for k in sure) and all(type(k) is PossibleLink for k in possible)
    assert format_pharaoh(sure, possible) == "0-0 1-2 2-1 3p3"
    sure, possible = parse_pharaoh("1-1 2-2", one_indexed=True)
    assert sure == {(0, 0), (1, 1)}
    with pytest.raises(ParallelFormatError, match=r"f:3: bad alignment link '0\?1'"):
        parse_pharaoh("0?1", path="f", lineno=3)


def test_flip_links_swaps_the_direction():
    assert flip_links([(0, 1), (2, 3)]) == {Link(1, 0), Link(3, 2)}


def test_viewer_links_use_the_same_order_as_align():
    """A Pharaoh string, align's links and the viewer's record agree on (source, target)."""
    weights = torch.zeros(3, 4)  # (L=3 target, S=4 source): row j is target word j
    weights[0, 1] = weights[1, 3] = weights[2, 0] = 1.0
    align_links = extract_alignment(
        torch.cat([weights, weights[-1:]]), n_source_words=4, n_target_words=3
    )  # predict: row j for target word j
    assert align_links == {(1, 0), (3, 1), (0, 2)}
    rec = as_record(weights, links=format_pharaoh(align_links), predicted=sorted(align_links))
    for k in rec.links + rec.predicted:
        assert isinstance(k, Link) and weights[k.target, k.source] == 1.0
    assert [tuple(k) for k in rec.links] == [(1, 0), (3, 1), (0, 2)]  # sorted by target


def test_viewer_links_keep_the_kind():
    links = normalize_links([PossibleLink(0, 1), (1, 1), (2, 0, "possible")], 3, 3)
    assert [(tuple(k), k.sure) for k in links] == [((2, 0), False), ((0, 1), False), ((1, 1), True)]
    both = normalize_links("0-1 0p1 1?2", 3, 3)  # a link given as sure and possible is sure
    assert [(tuple(k), k.sure) for k in both] == [((0, 1), True), ((1, 2), False)]
    with pytest.raises(ValueError, match="is not a Pharaoh link"):
        normalize_links("0:1", 3, 3)


def test_symmetrize_returns_links():
    out = symmetrize({(0, 0), (1, 2)}, {(0, 0), (1, 1)}, "grow-diag-final")
    assert out == {(0, 0), (1, 1), (1, 2)} and all(isinstance(k, Link) for k in out)
