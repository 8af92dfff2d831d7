"""The pixel judge: every rendered scene is judged as drawn; outlines, specks and colour shifts are told apart."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from inference_pod.drawing.judge import fill_holes, hollow_fraction, judge, largest_component, nearest_hue
from inference_pod.drawing.shapes import COLOURS, Scene, random_scenes, render


@pytest.mark.parametrize("outline", [False, True])
def test_every_rendered_scene_is_judged_as_drawn(outline: bool) -> None:
    for scene in random_scenes(96, seed=5):
        s = replace(scene, outline=outline)
        v = judge(render(s))
        assert v.describes(s.shape, s.colour), (s, v)
        assert v.outline == outline and v.background == s.background, (s, v)


def test_a_stray_speck_does_not_change_the_shape() -> None:
    im = render(Scene("circle", "blue", "black", side=18)).copy()
    im[31, 31] = (250, 250, 250)  # a corner pixel far from the background
    im[0, 5] = (250, 0, 0)
    assert judge(im).shape == "circle"


def test_blank_picture_has_no_figure() -> None:
    v = judge(np.full((32, 32, 3), 250, dtype=np.uint8))
    assert v.shape == "none" and v.colour == "none" and v.background == "white"


def test_hue_names_the_nearest_colour() -> None:
    for name, rgb in COLOURS.items():
        assert nearest_hue(np.array(rgb, dtype=float)) == name
    assert nearest_hue(np.array([230, 140, 20.0])) == "yellow"  # orange leans yellow
    assert nearest_hue(np.array([200, 20, 60.0])) == "red"


def test_hollow_fraction_sees_fill_turned_into_edges() -> None:
    plain = render(Scene("square", "red", "white", side=20))
    assert hollow_fraction(plain, plain) == 0.0
    assert hollow_fraction(plain, render(Scene("square", "red", "white", side=20, outline=True))) == 1.0
    assert hollow_fraction(plain, render(Scene("square", "green", "white", side=20))) == 0.0  # recoloured, still full
    with pytest.raises(ValueError, match="no figure"):
        hollow_fraction(np.full((32, 32, 3), 250, dtype=np.uint8), plain)


def test_components_and_holes() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:4, 1:4] = True
    mask[6, 6] = True
    big = largest_component(mask)
    assert big.sum() == 9 and not big[6, 6]
    ring = np.zeros((7, 7), dtype=bool)
    ring[1:6, 1:6] = True
    ring[2:5, 2:5] = False
    assert fill_holes(ring).sum() == 25
    with pytest.raises(ValueError):
        judge(np.zeros((4, 4), dtype=np.uint8))
