"""The synthetic data set the drawing model learns from: coloured shapes on plain backgrounds, with captions.

Pure functions: a `Scene` (shape, colour, background, style, size, offset) renders to an RGB array with PIL and has
a caption such as "a red circle on a white background". Scenes are drawn from a seeded numpy generator, so one
seed gives one data set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32  # pixels: the model's native image size
SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (250, 250, 250), "black": (10, 10, 10)}
OUTLINE_WIDTH = 2


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    outline: bool = False
    side: int = 18  # bounding box side, pixels
    dx: int = 0  # centre offset from the image centre
    dy: int = 0

    @property
    def caption(self) -> str:
        return caption(self.shape, self.colour, self.background)


def caption(shape: str, colour: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def all_captions() -> list[tuple[str, str, str]]:
    """(shape, colour, background) for every caption the model is trained on, in a fixed order."""
    return [(s, c, b) for b in BACKGROUNDS for c in COLOURS for s in SHAPES]


def render(scene: Scene, size: int = SIZE) -> np.ndarray:
    """The scene as a uint8 array [size, size, 3]."""
    im = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(im)
    cx, cy = size / 2 + scene.dx, size / 2 + scene.dy
    h = scene.side / 2
    box = (round(cx - h), round(cy - h), round(cx + h) - 1, round(cy + h) - 1)
    fill = COLOURS[scene.colour]
    kw = {"outline": fill, "width": OUTLINE_WIDTH} if scene.outline else {"fill": fill}
    if scene.shape == "circle":
        draw.ellipse(box, **kw)
    elif scene.shape == "square":
        draw.rectangle(box, **kw)
    elif scene.shape == "triangle":
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], **kw)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return np.asarray(im, dtype=np.uint8)


def random_scenes(n: int, seed: int) -> list[Scene]:
    """n scenes cycling through every caption, with a seeded random size and offset each."""
    rng = np.random.default_rng(seed)
    combos = all_captions()
    out = []
    for i in range(n):
        s, c, b = combos[i % len(combos)]
        out.append(
            Scene(s, c, b, side=int(rng.integers(14, 23)), dx=int(rng.integers(-3, 4)), dy=int(rng.integers(-3, 4)))
        )
    return out


# The LoRAs' targets: what each one turns a scene into (the caption stays the base model's).
PALETTE_SHIFT = {"red": "green", "green": "blue", "blue": "yellow", "yellow": "red"}


def restyle(scene: Scene, style: str) -> Scene:
    """The picture a LoRA of this style should draw for the scene's caption."""
    if style == "outline":
        return replace(scene, outline=True)
    if style == "square":
        return replace(scene, shape="square")
    if style == "palette":
        return replace(scene, colour=PALETTE_SHIFT[scene.colour])
    raise ValueError(f"unknown style {style!r}")


STYLES = ("outline", "square", "palette")
