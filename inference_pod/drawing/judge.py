"""Judge a picture from its pixels: which shape, which colour, filled or outlined.

Pure functions on an RGB uint8 array. The background is the median colour of the border; the figure is the
largest connected region of pixels far from it (stray specks elsewhere are ignored). Its colour is the palette
colour whose hue is nearest the figure's median hue; "outlined" means most of the figure's filled silhouette
(holes filled in) is not figure; the shape comes from how much of its bounding box the silhouette covers
(square ~1, circle ~pi/4, triangle ~1/2).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from inference_pod.drawing.shapes import BACKGROUNDS, COLOURS

FIGURE_DISTANCE = 90.0  # RGB distance from the background that makes a pixel part of the figure
MIN_FIGURE = 0.03  # fraction of the image below which there is no figure


@dataclass(frozen=True)
class Verdict:
    shape: str  # circle, square, triangle, or none
    colour: str  # a COLOURS name, or none
    background: str  # a BACKGROUNDS name
    outline: bool
    fill_ratio: float  # silhouette area / bounding box area
    ink_ratio: float  # figure area / silhouette area (1: solid, low: outlined)

    def describes(self, shape: str, colour: str) -> bool:
        return self.shape == shape and self.colour == colour


def hue(rgb: np.ndarray | tuple[int, int, int]) -> float:
    """Hue in degrees [0, 360) of an RGB colour (0-255)."""
    r, g, b = (float(x) / 255.0 for x in rgb)
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0


def nearest_hue(rgb: np.ndarray) -> str:
    """The COLOURS name whose hue is nearest this colour's (around the colour wheel)."""
    h = hue(rgb)
    dist = {n: min(abs(h - hue(c)), 360 - abs(h - hue(c))) for n, c in COLOURS.items()}
    return min(dist, key=lambda n: dist[n])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (all False if the mask is empty)."""
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        stack, region = [start], []
        while stack:
            y, x = stack.pop()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(region) > len(best):
            best = region
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best, strict=True)
        out[list(ys), list(xs)] = True
    return out


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    d = [float(np.linalg.norm(rgb - np.asarray(palette[n], dtype=np.float64))) for n in names]
    return names[int(np.argmin(d))]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every region not reachable from the border (through non-mask pixels) filled in."""
    outside = np.zeros_like(mask)
    free = ~mask
    outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1] = free[0, :], free[-1, :], free[:, 0], free[:, -1]
    while True:
        grown = outside.copy()
        grown[1:, :] |= outside[:-1, :]
        grown[:-1, :] |= outside[1:, :]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= free
        if (grown == outside).all():
            return ~outside
        outside = grown


def figure_mask(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of figure pixels, background RGB)."""
    px = image.astype(np.float64)
    border = np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])
    bg = np.median(border, axis=0)
    return np.linalg.norm(px - bg, axis=2) > FIGURE_DISTANCE, bg


def judge(image: np.ndarray) -> Verdict:
    """What the picture shows. image: uint8 [H, W, 3]."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be [H, W, 3]")
    mask, bg = figure_mask(image)
    background = _nearest(bg, BACKGROUNDS)
    mask = largest_component(mask)
    if mask.mean() < MIN_FIGURE:
        return Verdict("none", "none", background, False, 0.0, 0.0)
    colour = nearest_hue(np.median(image[mask].astype(np.float64), axis=0))
    solid = fill_holes(mask)
    ink = float(mask.sum() / solid.sum())
    rows, cols = np.nonzero(solid)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = float(solid.sum() / box)
    shape = "square" if fill > 0.9 else "circle" if fill > 0.66 else "triangle"
    return Verdict(shape, colour, background, ink < 0.7, fill, ink)


def erode(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """The mask shrunk by `steps` pixels (4-neighbourhood); the image border counts as outside."""
    out = mask.copy()
    for _ in range(steps):
        m = out
        out = m.copy()
        out[1:, :] &= m[:-1, :]
        out[:-1, :] &= m[1:, :]
        out[:, 1:] &= m[:, :-1]
        out[:, :-1] &= m[:, 1:]
        out[0, :] = out[-1, :] = out[:, 0] = out[:, -1] = False
    return out


def hollow_fraction(plain: np.ndarray, other: np.ndarray, inset: int = 2) -> float:
    """Of the pixels deep inside `plain`'s figure (`inset` pixels in from its edge), the fraction that are
    background in `other`: ~0 when `other` is filled where `plain` is, high when it is outlined (or empty) there."""
    mask, _ = figure_mask(plain)
    inside = erode(largest_component(mask), inset)
    if not inside.any():
        raise ValueError("the plain picture has no figure with an inside")
    other_mask, _ = figure_mask(other)
    return float((inside & ~other_mask).sum() / inside.sum())
