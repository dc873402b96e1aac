"""Symmetrisation heuristics on hand-made link sets (Koehn et al. 2003 definitions)."""

from __future__ import annotations

import pytest

from crossattn.align.symmetrize import SYMMETRIZATIONS, symmetrize

FORK = ({(0, 0), (1, 1), (2, 1)}, {(0, 0), (1, 1), (1, 2)})


def test_intersect_and_union():
    f, b = FORK
    assert symmetrize(f, b, "intersect") == {(0, 0), (1, 1)}
    assert symmetrize(f, b, "union") == {(0, 0), (1, 1), (2, 1), (1, 2)}


def test_grow_diag_adds_neighbours_with_a_free_word():
    f, b = FORK
    # (2, 1) and (1, 2) neighbour (1, 1), each with one unaligned word
    assert symmetrize(f, b, "grow-diag") == {(0, 0), (1, 1), (2, 1), (1, 2)}


def test_grow_diag_keeps_out_neighbours_whose_words_are_both_aligned():
    f, b = {(0, 0), (1, 1), (0, 1)}, {(0, 0), (1, 1)}
    for method in ("grow-diag", "grow-diag-final", "grow-diag-final-and"):
        assert symmetrize(f, b, method) == {(0, 0), (1, 1)}, method


def test_grow_diag_grows_along_a_diagonal_chain():
    f, b = {(0, 0), (1, 1), (2, 2)}, {(0, 0)}
    assert symmetrize(f, b, "grow-diag") == {(0, 0), (1, 1), (2, 2)}


def test_grow_diag_ignores_distant_links_and_final_adds_them():
    f, b = {(0, 0), (3, 3)}, {(0, 0)}
    assert symmetrize(f, b, "grow-diag") == {(0, 0)}
    assert symmetrize(f, b, "grow-diag-final") == {(0, 0), (3, 3)}
    assert symmetrize(f, b, "grow-diag-final-and") == {(0, 0), (3, 3)}


def test_final_and_needs_both_words_unaligned():
    f, b = {(0, 0), (0, 2)}, {(0, 0)}
    assert symmetrize(f, b, "grow-diag-final") == {(0, 0), (0, 2)}  # target 2 was free
    assert symmetrize(f, b, "grow-diag-final-and") == {(0, 0)}  # source 0 was not


def test_neighbour_order_and_final_takes_forward_before_backward():
    # (2, 0) and (2, 1) both neighbour (1, 1); the straight neighbour (2, 1) is tried first,
    # and then (2, 0) has both its words aligned
    f, b = {(0, 0), (1, 1), (2, 0)}, {(0, 0), (1, 1), (2, 1)}
    assert symmetrize(f, b, "grow-diag-final-and") == {(0, 0), (1, 1), (2, 1)}
    f, b = {(0, 0), (3, 2)}, {(0, 0), (3, 3)}
    # forward (3, 2) goes first; then backward (3, 3): source 3 aligned, target 3 free
    assert symmetrize(f, b, "grow-diag-final") == {(0, 0), (3, 2), (3, 3)}
    assert symmetrize(f, b, "grow-diag-final-and") == {(0, 0), (3, 2)}


@pytest.mark.parametrize("method", SYMMETRIZATIONS)
def test_between_intersection_and_union(method):
    f, b = {(0, 1), (1, 0), (2, 2), (4, 3)}, {(0, 1), (1, 1), (3, 3), (2, 4)}
    got = symmetrize(f, b, method)
    assert (f & b) <= got <= (f | b)


def test_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        symmetrize(set(), set(), "grow")
    with pytest.raises(ValueError, match="backward holds a negative"):
        symmetrize({(0, 0)}, {(-1, 0)})
    with pytest.raises(TypeError, match="forward must be"):
        symmetrize([1, 2], set())
