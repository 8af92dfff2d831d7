"""A contact sheet: one PNG holding a grid of pictures, rows labelled with prompts and columns with adapters.

Pure PIL: pictures come in as PNG bytes, each cell is scaled up (nearest neighbour, so the model's pixels stay
visible), and the labels are drawn with PIL's built-in font.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

CELL = 96
PAD = 6
ROW_LABEL_W = 250
HEADER_H = 22


def _font(size: int = 13) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def contact_sheet(
    rows: Sequence[str], cols: Sequence[str], pngs: Mapping[tuple[str, str], bytes], cell: int = CELL
) -> Image.Image:
    """The grid: pngs[(row, col)] at row `row`, column `col`; a missing cell stays blank."""
    font = _font()
    width = ROW_LABEL_W + len(cols) * (cell + PAD) + PAD
    height = HEADER_H + len(rows) * (cell + PAD) + PAD
    sheet = Image.new("RGB", (width, height), (235, 235, 235))
    draw = ImageDraw.Draw(sheet)
    for j, col in enumerate(cols):
        draw.text(
            (ROW_LABEL_W + j * (cell + PAD) + cell // 2, HEADER_H // 2), col, fill=(0, 0, 0), font=font, anchor="mm"
        )
    for i, row in enumerate(rows):
        y = HEADER_H + i * (cell + PAD)
        draw.text((PAD, y + cell // 2), row, fill=(0, 0, 0), font=font, anchor="lm")
        for j, col in enumerate(cols):
            data = pngs.get((row, col))
            if data is None:
                continue
            with Image.open(io.BytesIO(data)) as im:
                tile = im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(tile, (ROW_LABEL_W + j * (cell + PAD), y))
    return sheet


def save_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
