"""PNG figures for the model card, drawn with Pillow (no matplotlib at run time)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from hexnode.train import metrics as M

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (120, 120, 120)]


def _axes(title: str, xlabel: str, ylabel: str, size: int = 520) -> tuple[Image.Image, ImageDraw.ImageDraw, tuple[int, int, int]]:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    x0, y0, w = 60, size - 50, size - 90
    d.rectangle([x0, y0 - w, x0 + w, y0], outline="black")
    for t in np.linspace(0, 1, 6):
        d.line([x0 + t * w, y0, x0 + t * w, y0 + 4], fill="black")
        d.text((x0 + t * w - 8, y0 + 8), f"{t:.1f}", fill="black")
        d.line([x0 - 4, y0 - t * w, x0, y0 - t * w], fill="black")
        d.text((x0 - 30, y0 - t * w - 5), f"{t:.1f}", fill="black")
    d.text((x0, 12), title, fill="black")
    d.text((x0 + w // 2 - 40, y0 + 28), xlabel, fill="black")
    d.text((4, y0 - w - 20), ylabel, fill="black")
    return img, d, (x0, y0, w)


def roc_png(path: Path, labels: NDArray[np.generic], curves: Sequence[tuple[str, NDArray[np.float64]]], title: str) -> None:
    img, d, (x0, y0, w) = _axes(title, "1 - specificity", "sensitivity")
    d.line([x0, y0, x0 + w, y0 - w], fill=(200, 200, 200))
    for k, (name, scores) in enumerate(curves):
        fpr, tpr, _ = M.roc_curve(labels, scores)
        pts = [(x0 + f * w, y0 - t * w) for f, t in zip(fpr, tpr, strict=True)] + [(x0 + w, y0 - w)]
        col = COLOURS[k % len(COLOURS)]
        d.line(pts, fill=col, width=2)
        d.text((x0 + w - 200, y0 - 20 - 14 * (len(curves) - k)), f"{name}: AUC {M.auc(labels, scores):.3f}", fill=col)
    img.save(path)


def reliability_png(path: Path, labels: NDArray[np.generic], probs: NDArray[np.float64], title: str) -> None:
    img, d, (x0, y0, w) = _axes(title, "predicted probability", "observed frequency")
    d.line([x0, y0, x0 + w, y0 - w], fill=(200, 200, 200))
    bins = M.reliability(labels, probs, 10)
    n = max(1, len(np.asarray(labels)))
    for mp, fy, c in bins:
        r = 3 + int(12 * np.sqrt(c / n))
        cx, cy = x0 + mp * w, y0 - fy * w
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=COLOURS[0], width=2)
    d.line([(x0 + mp * w, y0 - fy * w) for mp, fy, _ in bins], fill=COLOURS[0], width=2) if len(bins) > 1 else None
    d.text((x0 + 10, y0 - w + 10), f"ECE (10 bins) = {M.ece(labels, probs):.3f}, n = {n}", fill="black")
    img.save(path)


def _outline(m: NDArray[np.bool_]) -> NDArray[np.bool_]:
    from scipy import ndimage as ndi

    return m & ~ndi.binary_erosion(m)


def contour_png(path: Path, panels: Sequence[tuple[str, NDArray[Any], NDArray[Any], NDArray[Any]]], scale: int = 2) -> None:
    """One tile per case: CT (0-100 HU) with truth (green) and prediction (red) outlines."""
    tiles = []
    for caption, hu, gt, pred in panels:
        g = (np.clip(np.asarray(hu, float) / 100.0, 0, 1) * 255).astype(np.uint8)
        rgb = np.stack([g, g, g], -1)
        rgb[_outline(np.asarray(gt) > 0)] = (0, 220, 0)
        rgb[_outline(np.asarray(pred) > 0)] = (255, 40, 40)
        tile = Image.fromarray(rgb).resize((hu.shape[1] * scale, hu.shape[0] * scale), Image.Resampling.NEAREST)
        canvas = Image.new("RGB", (tile.width, tile.height + 16), "white")
        canvas.paste(tile, (0, 16))
        ImageDraw.Draw(canvas).text((2, 2), caption, fill="black")
        tiles.append(canvas)
    if not tiles:
        return
    cols = min(3, len(tiles))
    rows = -(-len(tiles) // cols)
    tw = max(t.width for t in tiles)
    th = max(t.height for t in tiles)
    sheet = Image.new("RGB", (cols * tw, rows * th), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * tw, (i // cols) * th))
    sheet.save(path)
