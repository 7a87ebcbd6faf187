"""Pixels of the summary Secondary Capture: a key CT slice with the mask outline and burned-in text.

The slice is rendered at 512 x 512 and framed by a margin holding the orientation markers (the
patient's side at each edge, from the source's Image Orientation); the text sits in a band to the
right of it (`compose`), so no letter ever covers the anatomy, however tight the field of view.
The colours are neutral: the risk is read from its word and its fixed place (the band's first
line), never from red and green. Amber marks what qualifies a result (notes, the disclaimer).
Summaries without an image (not analysed) keep text boxes on black (`annotate`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

SIZE = 512
MARGIN = 8
WINDOW_HU = (0.0, 100.0)  # the blood window of docs/architecture.md §3 and of every stroke reader
OUTLINE_RGB = (255, 215, 0)
WARN_RGB = (255, 170, 40)
TEXT_RGB = (240, 240, 240)
HEADLINE_RGB = (255, 255, 255)  # the risk line: white, whatever the risk (no green = safe)
MARKER_RGB = (200, 200, 200)
FRAME = 26  # the margin around the slice that holds the orientation markers
BAND = 420  # the text band beside the slice
BAND_GAP = 16  # between the band's top block (the result) and its bottom block (what qualifies it)


# Joins words the wrap must never part ("MLS 3 mm"): drawn as a plain space.
KEEP = "\u00a0"


# a quantity with its unit and its comparison ("> 33 %", "12.4 ml"): never parted by a wrap
QUANTITY = re.compile(r"(?:[<>≤≥] )?\d+(?:\.\d+)? (?:%|ml|mm|HU|cm2)(?![\w])")


def keep_together(phrase: str) -> str:
    return phrase.replace(" ", KEEP)


@dataclass(frozen=True)
class Line:
    text: str
    size: int = 16
    rgb: tuple[int, int, int] = TEXT_RGB


def key_slice(mask: np.ndarray) -> int:
    """The axial slice with the largest hematoma area; the middle slice when there is none."""
    # slice by slice: `astype(bool)` or `count_nonzero(axis=...)` of the whole mask would copy it
    # (157 MB at 600 x 512^2, bench/memory.py)
    areas = np.array([np.count_nonzero(m) for m in mask], np.int64)
    if int(areas.max(initial=0)) == 0:
        return mask.shape[0] // 2
    return int(np.argmax(areas))


def _square(img: np.ndarray, fill: float) -> np.ndarray:
    rows, cols = img.shape
    side = max(rows, cols)
    out = np.full((side, side), fill, dtype=img.dtype)
    r0, c0 = (side - rows) // 2, (side - cols) // 2
    out[r0 : r0 + rows, c0 : c0 + cols] = img
    return out


def slice_rgb(hu: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """One (rows, cols) HU slice windowed 0-100 HU, scaled to 512 x 512, mask outlined."""
    lo, hi = WINDOW_HU
    grey = np.clip((hu.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255)
    grey_img = Image.fromarray(_square(grey, 0.0).astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    rgb = np.repeat(np.asarray(grey_img)[:, :, None], 3, axis=2).copy()
    if mask is not None and mask.any():
        big = Image.fromarray(_square(mask.astype(np.uint8) * 255, 0)).resize((SIZE, SIZE), Image.Resampling.NEAREST)
        inside = np.asarray(big) > 127
        # Outer contour, 2 px: it never hides the hematoma's own edge density.
        ring = ndimage.binary_dilation(inside, iterations=2) & ~inside
        rgb[ring] = OUTLINE_RGB
    return rgb


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled scalable font: no system font package needed on any host.
    return ImageFont.load_default(size=size)


def wrap(draw: ImageDraw.ImageDraw, line: Line, width: int) -> list[Line]:
    """`line` as the lines it takes at `width` pixels, broken at plain spaces only."""
    font = _font(line.size)
    if not line.text:
        return [line]  # a spacer
    # split on plain spaces only: str.split() would also part the KEEP-joined phrases
    text = QUANTITY.sub(lambda m: keep_together(m.group(0)), line.text)
    words, out, current = [w for w in text.split(" ") if w], [], ""
    for word in words:
        trial = f"{current} {word}".strip()
        if current and draw.textlength(trial.replace(KEEP, " "), font=font) > width:
            out.append(Line(current.replace(KEEP, " "), line.size, line.rgb))
            current = word
        else:
            current = trial
    if current:
        out.append(Line(current.replace(KEEP, " "), line.size, line.rgb))
    return out


def _block(draw: ImageDraw.ImageDraw, lines: Sequence[Line], *, top: bool) -> None:
    width = SIZE - 2 * MARGIN - 8
    wrapped = [w for line in lines for w in wrap(draw, line, width)]
    if not wrapped:
        return
    heights = [line.size + 4 for line in wrapped]
    box_h = sum(heights) + 8
    box_w = max(int(draw.textlength(w.text, font=_font(w.size))) for w in wrapped) + 8
    y0 = MARGIN if top else SIZE - MARGIN - box_h
    draw.rectangle((MARGIN, y0, MARGIN + box_w, y0 + box_h), fill=(0, 0, 0, 170))
    y = y0 + 4
    for line, h in zip(wrapped, heights, strict=True):
        draw.text((MARGIN + 4, y), line.text, font=_font(line.size), fill=(*line.rgb, 255))
        y += h


@dataclass(frozen=True)
class Markers:
    """Patient-orientation letters at the slice's edges (e.g. R / L / A / P on a standard axial)."""

    left: str
    right: str
    top: str
    bottom: str


def _wrapped(draw: ImageDraw.ImageDraw, lines: Sequence[Line], width: int) -> list[Line]:
    return [w for line in lines for w in wrap(draw, line, width)]


def _height(lines: Sequence[Line]) -> int:
    return sum(line.size + 4 for line in lines)


def _text(draw: ImageDraw.ImageDraw, x: int, y: int, lines: Sequence[Line]) -> None:
    for line in lines:
        draw.text((x, y), line.text, font=_font(line.size), fill=line.rgb)
        y += line.size + 4


def compose(rgb: np.ndarray, markers: Markers, top: Sequence[Line], bottom: Sequence[Line]) -> np.ndarray:
    """The slice in its marker frame, the text band to its right: `top` from the band's top (the
    result, always in the same place), `bottom` down to its foot (what qualifies it). The canvas
    grows taller, never over the slice, when the text needs more room."""
    side = SIZE + 2 * FRAME
    width = side + BAND
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = BAND - 2 * MARGIN
    head, foot = _wrapped(measure, top, text_w), _wrapped(measure, bottom, text_w)
    height = max(side, 2 * MARGIN + _height(head) + BAND_GAP + _height(foot))
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb), (FRAME, FRAME))
    draw = ImageDraw.Draw(canvas)
    font = _font(18)
    mid = FRAME + SIZE // 2
    for letter, (x, y) in (
        (markers.left, (FRAME // 2, mid)), (markers.right, (FRAME + SIZE + FRAME // 2, mid)),
        (markers.top, (mid, FRAME // 2)), (markers.bottom, (mid, FRAME + SIZE + FRAME // 2)),
    ):
        draw.text((x, y), letter, font=font, fill=MARKER_RGB, anchor="mm")
    draw.line((side, 0, side, height), fill=(90, 90, 90), width=1)
    _text(draw, side + MARGIN, MARGIN, head)
    _text(draw, side + MARGIN, height - MARGIN - _height(foot), foot)
    return np.asarray(canvas)


def annotate(rgb: np.ndarray, top: Sequence[Line], bottom: Sequence[Line]) -> np.ndarray:
    base = Image.fromarray(rgb).convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    _block(draw, top, top=True)
    _block(draw, bottom, top=False)
    return np.asarray(Image.alpha_composite(base, overlay).convert("RGB"))


def blank() -> np.ndarray:
    return np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
