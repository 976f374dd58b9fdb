"""Draw labelled heat maps (rows × columns of weights in 0..vmax) with a colour bar, using Pillow only."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

# Viridis sampled at nine even steps: perceptually uniform, readable in grey, and its brightness rises with the value,
# so the largest weight is always the brightest cell.
VIRIDIS = [
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
]  # fmt: skip
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
MAX_LABEL = 14


@dataclass
class Drawing:
    """The image and where its cells are, so that a reader (or a test) can find the cell of a weight."""

    image: Any
    cell: int
    origins: list[tuple[int, int]] = field(default_factory=list)
    """Top-left pixel of each panel's first cell."""

    def centre(self, panel: int, row: int, column: int) -> tuple[int, int]:
        x, y = self.origins[panel]
        return x + column * self.cell + self.cell // 2, y + row * self.cell + self.cell // 2


def colour(value: float, vmax: float) -> tuple[int, int, int]:
    """The viridis colour of `value` on a scale from 0 to `vmax`."""
    position = 0.0 if vmax <= 0 else min(max(value / vmax, 0.0), 1.0) * (len(VIRIDIS) - 1)
    low = min(int(position), len(VIRIDIS) - 2)
    frac = position - low
    a, b = VIRIDIS[low], VIRIDIS[low + 1]
    return tuple(round(a[i] + (b[i] - a[i]) * frac) for i in range(3))  # type: ignore[return-value]


def draw_heatmaps(
    panels: list[tuple[str, np.ndarray]],
    row_labels: list[str],
    column_labels: list[str],
    *,
    title: str,
    vmax: float,
    blank: np.ndarray | None = None,
    footnotes: tuple[str, ...] = (),
) -> Drawing:
    """One heat map per panel (each `(name, weights)` with weights of shape (rows, columns)), on a shared scale.

    Cells where `blank` is true are left as background: for attention, the future keys a causal model cannot see.
    """
    from PIL import Image, ImageDraw

    rows, columns = panels[0][1].shape
    cell = max(6, min(28, 640 // max(rows, columns)))
    font = _font(max(7, min(12, cell - 2)))
    big, small = _font(13), _font(11)
    rows_text = [_printable(font, label) for label in row_labels]
    columns_text = [_printable(font, label) for label in column_labels]
    label_w = max(_width(font, t) for t in rows_text) + 6
    label_h = max(_width(font, t) for t in columns_text) + 6
    name_h = _height(big) + 6
    panel_w, panel_h = label_w + columns * cell + 16, name_h + label_h + rows * cell + 16
    grid_cols = math.ceil(math.sqrt(len(panels)))
    grid_rows = math.ceil(len(panels) / grid_cols)
    margin, bar_w = 12, 16
    tick_w = _width(font, f"{vmax:.2f}") + 8
    title_h = _height(big) + 10
    notes_h = len(footnotes) * (_height(small) + 4) + (6 if footnotes else 0)
    width = margin * 2 + grid_cols * panel_w + bar_w + tick_w + 8
    width = max(width, margin * 2 + max([_width(big, title), *(_width(small, n) for n in footnotes)]))
    height = margin * 2 + title_h + grid_rows * panel_h + notes_h
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((margin, margin), title, fill=INK, font=big)

    drawing = Drawing(image=image, cell=cell)
    for n, (name, weights) in enumerate(panels):
        px = margin + (n % grid_cols) * panel_w
        py = margin + title_h + (n // grid_cols) * panel_h
        if len(panels) > 1:
            draw.text((px + label_w, py), name, fill=INK, font=big)
        x0, y0 = px + label_w, py + name_h + label_h
        drawing.origins.append((x0, y0))
        for j, text in enumerate(columns_text):
            _vertical_text(image, text, font, (x0 + j * cell + (cell - _height(font)) // 2, y0 - 4))
        for i, text in enumerate(rows_text):
            draw.text(
                (x0 - 4 - _width(font, text), y0 + i * cell + (cell - _height(font)) // 2), text, fill=INK, font=font
            )
        for i in range(rows):
            for j in range(columns):
                if blank is not None and blank[i, j]:
                    continue
                box = (x0 + j * cell, y0 + i * cell, x0 + (j + 1) * cell - 1, y0 + (i + 1) * cell - 1)
                draw.rectangle(box, fill=colour(float(weights[i, j]), vmax))
        draw.rectangle((x0 - 1, y0 - 1, x0 + columns * cell, y0 + rows * cell), outline=(160, 160, 160))

    # The colour bar, level with the first panel's cells, with 0 at the bottom and vmax at the top.
    bx, by = margin + grid_cols * panel_w + 4, drawing.origins[0][1]
    bar_h = max(rows * cell, 60)
    for y in range(bar_h):
        draw.line((bx, by + y, bx + bar_w - 1, by + y), fill=colour(vmax * (1 - y / (bar_h - 1)), vmax))
    draw.rectangle((bx - 1, by - 1, bx + bar_w, by + bar_h), outline=(160, 160, 160))
    for fraction in (0.0, 0.5, 1.0):
        y = by + round((1 - fraction) * (bar_h - 1))
        draw.line((bx + bar_w, y, bx + bar_w + 3, y), fill=INK)
        draw.text((bx + bar_w + 5, y - _height(font) // 2), f"{vmax * fraction:.2f}", fill=INK, font=font)

    y = margin + title_h + grid_rows * panel_h + 6
    for note in footnotes:
        draw.text((margin, y), note, fill=INK, font=small)
        y += _height(small) + 4
    return drawing


@lru_cache(maxsize=8)
def _font(size: int) -> Any:
    """DejaVu Sans where the system has it (wide Unicode coverage), else Pillow's built-in font."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _width(font: Any, text: str) -> int:
    return math.ceil(font.getlength(text)) if text else 0


def _height(font: Any) -> int:
    box = font.getbbox("Ag")
    return box[3] - box[1] + 2


def _printable(font: Any, label: str) -> str:
    """A label the font can draw: spaces as '·', control characters and glyphs the font lacks escaped."""
    label = label.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").replace(" ", "·")
    missing = _missing_glyph(font)
    out = []
    for ch in label:
        if not ch.isprintable() or (ord(ch) > 0x7E and _glyph(font, ch) == missing):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    text = "".join(out)
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def _glyph(font: Any, ch: str) -> tuple:
    mask = font.getmask(ch)
    return mask.size, bytes(mask)


def _missing_glyph(font: Any) -> tuple:
    return _glyph(font, "\U0010fffd")  # a private-use character no font draws


def _vertical_text(image: Any, text: str, font: Any, bottom_left: tuple[int, int]) -> None:
    """Draw `text` turned 90° anticlockwise, its baseline end at `bottom_left`, reading bottom to top."""
    from PIL import Image, ImageDraw

    w, h = max(_width(font, text), 1), _height(font)
    strip = Image.new("L", (w, h), 0)
    ImageDraw.Draw(strip).text((0, 0), text, fill=255, font=font)
    turned = strip.rotate(90, expand=True)
    x, y = bottom_left
    image.paste(Image.new("RGB", turned.size, INK), (x, y - turned.size[1]), turned)
