"""Heatmap overlays: the X-ray in gray, the heatmap in colour, the boxes, and the finding with its probability.

The colour map comes from matplotlib (``jet`` by default, the one the CheXNet
papers show); the drawing is done with PIL at the original image's size, so
an overlay of a 1024x1024 X-ray is a 1024x1024 PNG whose pixels line up with
the boxes' coordinates. Small images (the synthetic set's 128 px) can be drawn
enlarged by an integer ``scale`` so that the label stays legible. Importing this module does not pick a matplotlib
backend; only the colour map table is used.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from paddle_chexnet.localization.boxes import Box
from paddle_chexnet.utils.io import atomic_path


def normalize_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] from 0 to its maximum, negative values at 0 (min..max when nothing is positive).

    The same convention as the box threshold (:func:`paddle_chexnet.localization.boxes.threshold_level`):
    a colour at 50 % of the scale is a pixel at 50 % of the maximum.
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    high, low = float(heatmap.max()), float(heatmap.min())
    low = 0.0 if high > 0 else low
    if high <= low:
        return np.zeros(heatmap.shape, dtype=np.float64)
    return np.clip((heatmap - low) / (high - low), 0.0, 1.0)


def colorize(heatmap: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """``[H, W]`` map -> ``[H, W, 3]`` uint8 colours of the matplotlib colour map ``cmap``."""
    import matplotlib

    table = (matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    return table[np.round(normalize_heatmap(heatmap) * 255).astype(np.int64)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def overlay_heatmap(
    image: Image.Image,
    heatmap: np.ndarray | None,
    boxes: Sequence[Box] = (),
    label: str | None = None,
    alpha: float = 0.4,
    cmap: str = "jet",
    box_color: tuple[int, int, int] = (255, 255, 255),
    scale: int = 1,
) -> Image.Image:
    """Blend a heatmap over an X-ray and draw boxes and a label.

    Args:
        image (PIL.Image.Image): the original X-ray (any mode).
        heatmap (numpy.ndarray | None): ``[H, W]`` map at the image's size (see
            :func:`paddle_chexnet.localization.boxes.upsample_heatmap`); None draws boxes only.
        boxes (Sequence[Box], optional): boxes in the image's pixels. Default: ().
        label (str, optional): text for the top-left corner, e.g. ``"Effusion p=0.87"``. Default: None.
        alpha (float, optional): weight of the colours. Default: 0.4.
        cmap (str, optional): matplotlib colour map. Default: 'jet'.
        box_color (tuple, optional): RGB of the box outlines. Default: white.
        scale (int, optional): draw ``scale`` times larger (bilinear), so that the label
            stays legible on small images; box coordinates are scaled with it. Default: 1.

    Returns:
        PIL.Image.Image: an RGB image of the image's size times ``scale``.
    """
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    size = (image.width * scale, image.height * scale)
    rgb = image.convert("RGB")
    base = np.asarray(rgb if scale == 1 else rgb.resize(size, Image.BILINEAR), dtype=np.float64)
    if heatmap is not None:
        heatmap = np.asarray(heatmap, dtype=np.float32)
        if heatmap.shape != (image.height, image.width):
            raise ValueError(
                f"heatmap shape {heatmap.shape} differs from the image's {(image.height, image.width)}; upsample "
                "it first (paddle_chexnet.boxes.upsample_heatmap)"
            )
        if scale != 1:
            heatmap = np.asarray(Image.fromarray(heatmap, mode="F").resize(size, Image.BILINEAR))
        base = (1.0 - alpha) * base + alpha * colorize(heatmap, cmap)
    out = Image.fromarray(np.clip(base.round(), 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(out)
    width, height = out.size
    line = max(1, round(min(width, height) / 256))
    for box in boxes:
        draw.rectangle([box.x * scale, box.y * scale, box.x2 * scale - 1, box.y2 * scale - 1],
                       outline=box_color, width=line)
    if label:
        font = _font(max(10, min(width, height) // 28))
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        pad = max(2, line * 2)
        draw.rectangle([0, 0, right - left + 2 * pad, bottom - top + 2 * pad], fill=(0, 0, 0))
        draw.text((pad - left, pad - top), label, fill=(255, 255, 255), font=font)
    return out


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Save ``image`` as PNG atomically (a reader never sees half a file)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")  # optimize=True is 10x slower for a few % smaller files
    return path
