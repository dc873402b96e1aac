"""Grounding scores against hand-computed cases: pointing game, mass in the object, baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossattn.grounding import (
    grounding_report,
    map_point,
    mass_in_region,
    pointing_game,
    region_mask,
    uniform_pointing,
)


def one_hot(h, w, i, j):
    m = np.zeros((h, w))
    m[i, j] = 1.0
    return m


def test_map_point_is_the_centre_of_the_largest_cell_in_pixels():
    assert map_point(one_hot(8, 8, 0, 0), (64, 64)) == (4.0, 4.0)
    assert map_point(one_hot(8, 8, 2, 5), (64, 64)) == (44.0, 20.0)  # x from the column
    assert map_point(one_hot(2, 4, 1, 3), (400, 100)) == (350.0, 75.0)  # non-square image
    ties = np.ones((3, 3))
    assert map_point(ties, (30, 30)) == (5.0, 5.0)  # first cell in row-major order


def test_pointing_game_box_edges_are_half_open():
    maps = torch.tensor(np.stack([one_hot(8, 8, 2, 5)] * 4))  # point (44, 20)
    boxes = [(44, 20, 45, 21), (40, 16, 44, 24), (30, 10, 50, 20), (30, 10, 50, 30)]
    assert pointing_game(maps, boxes, image_size=(64, 64)) == [True, False, False, True]


def test_pointing_game_with_masks_reads_the_pixel():
    mask = np.zeros((64, 64), dtype=bool)
    mask[20, 44] = True  # row y=20, column x=44
    hit = pointing_game([one_hot(8, 8, 2, 5)], masks=[mask], image_size=(64, 64))
    miss = pointing_game([one_hot(8, 8, 2, 4)], masks=[mask], image_size=(64, 64))
    assert hit == [True] and miss == [False]


def test_mass_in_region_hand_computed():
    # a 2 x 2 map over a 4 x 4 image; the box covers the top-left cell exactly and half of the
    # top-right one
    grid = np.array([[0.5, 0.25], [0.125, 0.125]])
    ((mass, area),) = mass_in_region([grid], [(0, 0, 3, 2)], image_size=(4, 4))
    assert mass == pytest.approx(0.5 + 0.25 / 2)
    assert area == pytest.approx(6 / 16)
    # a uniform map has mass equal to area
    ((mass, area),) = mass_in_region([np.ones((4, 4))], [(1, 1, 4, 3)], image_size=(8, 8))
    assert mass == pytest.approx(area)


def test_mass_unnormalised_maps_are_normalised():
    grid = np.array([[2.0, 0.0], [0.0, 2.0]])
    ((mass, _),) = mass_in_region([grid], [(0, 0, 1, 1)], image_size=(2, 2))
    assert mass == pytest.approx(0.5)


def test_region_mask_uses_pixel_centres():
    m = region_mask((1.0, 0.0, 2.6, 1.0), (4, 2))
    assert m.tolist() == [[False, True, True, False], [False, False, False, False]]


def test_uniform_pointing_is_the_share_of_cell_centres_inside():
    # 8 x 8 grid on 64 px: centres at 4, 12, ..., 60; box [0, 16) x [0, 16) holds 2 x 2 of 64
    assert uniform_pointing((8, 8), [(0, 0, 16, 16)], image_size=(64, 64), n=1) == [4 / 64]


def test_report_baselines():
    rng = np.random.default_rng(0)
    n = 50
    boxes, maps = [], []
    for _ in range(n):
        i, j = rng.integers(0, 8, size=2)
        boxes.append((8 * j, 8 * i, 8 * j + 8, 8 * i + 8))
        maps.append(one_hot(8, 8, i, j) + 0.01)
    report = grounding_report(np.stack(maps), boxes, image_size=(64, 64))
    assert report["n"] == n and report["pointing_game"] == 1.0
    assert report["uniform"]["pointing_game"] == pytest.approx(1 / 64)
    assert report["shuffled"]["pointing_game"] < 0.3
    # mass on the box: (1 + 0.01) / (1 + 64 * 0.01) of the map over 1/64 of the image
    assert report["mass_over_area"] == pytest.approx(64 * 1.01 / 1.64)
    assert report["shuffled"]["mass_over_area"] < 5


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pointing_game(np.zeros((2, 3)), [(0, 0, 1, 1)], image_size=(4, 4)), "maps"),
        (
            lambda: pointing_game([-np.ones((2, 2))], [(0, 0, 1, 1)], image_size=(4, 4)),
            "non-negative",
        ),  # noqa: E501
        (lambda: pointing_game([np.ones((2, 2))], [(1, 0, 1, 1)], image_size=(4, 4)), "boxes"),
        (lambda: pointing_game([np.ones((2, 2))], image_size=(4, 4)), "boxes or masks"),
        (lambda: pointing_game([np.ones((2, 2))], [(0, 0, 1, 1)], image_size=(4, 0)), "image_size"),
        (
            lambda: pointing_game([np.ones((2, 2))] * 2, [(0, 0, 1, 1)] * 3, image_size=(4, 4)),
            "boxes",
        ),  # noqa: E501
        (
            lambda: mass_in_region([np.ones((2, 2))], masks=[np.ones((3, 3))], image_size=(4, 4)),
            "masks",
        ),  # noqa: E501
        (lambda: grounding_report([], [], image_size=(4, 4)), "empty"),
    ],
)
def test_bad_input_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
