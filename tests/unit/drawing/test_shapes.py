"""The synthetic data set: captions, seeded scenes, the LoRAs' restyled targets, a labelled contact sheet."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from inference_pod.drawing import shapes
from inference_pod.drawing.sheet import CELL, HEADER_H, PAD, ROW_LABEL_W, contact_sheet, save_png


def test_captions_cover_every_combination_once() -> None:
    combos = shapes.all_captions()
    assert len(combos) == len(set(combos)) == len(shapes.SHAPES) * len(shapes.COLOURS) * len(shapes.BACKGROUNDS)
    assert shapes.Scene("circle", "red", "white").caption == "a red circle on a white background"


def test_scenes_are_deterministic_for_a_seed() -> None:
    assert shapes.random_scenes(50, 3) == shapes.random_scenes(50, 3)
    assert shapes.random_scenes(50, 3) != shapes.random_scenes(50, 4)
    a = np.stack([shapes.render(s) for s in shapes.random_scenes(10, 3)])
    b = np.stack([shapes.render(s) for s in shapes.random_scenes(10, 3)])
    assert (a == b).all() and a.shape == (10, shapes.SIZE, shapes.SIZE, 3)


def test_restyle_targets() -> None:
    s = shapes.Scene("circle", "blue", "white")
    assert shapes.restyle(s, "outline").outline
    assert shapes.restyle(s, "square").shape == "square"
    assert shapes.restyle(s, "palette").colour == shapes.PALETTE_SHIFT["blue"] != "blue"
    assert sorted(shapes.PALETTE_SHIFT) == sorted(shapes.PALETTE_SHIFT.values()) == sorted(shapes.COLOURS)


def test_contact_sheet_places_each_picture_in_its_cell() -> None:
    def png(rgb: tuple[int, int, int]) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), rgb).save(buf, format="PNG")
        return buf.getvalue()

    rows, cols = ["p1", "p2"], ["base", "lora"]
    sheet = contact_sheet(rows, cols, {("p2", "lora"): png((255, 0, 0)), ("p1", "base"): png((0, 0, 255))})
    assert sheet.size == (ROW_LABEL_W + 2 * (CELL + PAD) + PAD, HEADER_H + 2 * (CELL + PAD) + PAD)
    x, y = ROW_LABEL_W + (CELL + PAD) + CELL // 2, HEADER_H + (CELL + PAD) + CELL // 2
    assert sheet.getpixel((x, y)) == (255, 0, 0)
    assert sheet.getpixel((ROW_LABEL_W + CELL // 2, HEADER_H + CELL // 2)) == (0, 0, 255)
    assert sheet.getpixel((ROW_LABEL_W + CELL // 2, y)) == (235, 235, 235)  # missing cell stays blank
    assert save_png(sheet).startswith(b"\x89PNG")
