"""Sample grids: one row per class (its name at the left), alone or two panels side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deliberate.errors import DeliberateError
from deliberate.report.plots import DPI, FONT_PT, figure, save

CELL_PX = 84  # the longer side of each image in a grid: 28 x 28 Fashion-MNIST is upscaled 3x
PAD_PX = 2  # white gap between images
TITLE_PX = 32  # band above the grid for the figure title
PANEL_TITLE_PX = 24  # band above each panel of a paired grid
GAP_PX = 16  # space between the two panels of a paired grid


def _as_rgb(images: np.ndarray) -> np.ndarray:
    """Return (N, H, W, 3) uint8 from grey (N, H, W), (N, H, W, 1), RGB or RGBA (alpha dropped)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = getattr(images, "dtype", type(images).__name__)
        raise DeliberateError(f"grid images must be a uint8 array, not {got}; scale to 0..255")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3, 4):
        raise DeliberateError(
            f"grid images must be (N, H, W) or (N, H, W, 1|3|4), not {images.shape}"
        )
    if images.shape[3] == 1:
        return np.repeat(images, 3, axis=3)
    return images[..., :3]


def _fit(image: np.ndarray) -> np.ndarray:
    """Scale one (H, W, 3) image so its longer side is about CELL_PX: nearest up, Lanczos down."""
    h, w = image.shape[:2]
    if max(h, w) <= CELL_PX:
        s = CELL_PX // max(h, w)  # an integer factor keeps every source pixel a crisp square
        return np.repeat(np.repeat(image, s, axis=0), s, axis=1)
    from PIL import Image

    size = (round(w * CELL_PX / max(h, w)), round(h * CELL_PX / max(h, w)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _pick(labels: np.ndarray, num_classes: int, per_class: int) -> list[np.ndarray]:
    """Return, per class, the indices of its first `per_class` images (fixed, so grids compare)."""
    return [np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]


def _mosaic(images: np.ndarray, picks: list[np.ndarray], per_class: int) -> np.ndarray:
    """Tile the picked images into one (rows, per_class) RGB mosaic on a white background."""
    rgb = _as_rgb(images)
    ch, cw = _fit(rgb[0]).shape[:2]
    out = np.full(
        (len(picks) * (ch + PAD_PX) + PAD_PX, per_class * (cw + PAD_PX) + PAD_PX, 3),
        255,
        np.uint8,
    )
    for r, idx in enumerate(picks):
        for c, i in enumerate(idx):
            y, x = PAD_PX + r * (ch + PAD_PX), PAD_PX + c * (cw + PAD_PX)
            out[y : y + ch, x : x + cw] = _fit(rgb[i])
    return out


def _check(images: np.ndarray, labels, class_names: Sequence[str]) -> np.ndarray:
    """Validate labels against images and class names; return them as int64."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(images):
        raise DeliberateError(f"grid got {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise DeliberateError("grid got no images; generate some before plotting")
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise DeliberateError(
            f"grid labels span {labels.min()}..{labels.max()} but there are "
            f"{len(class_names)} class names; pass one name per class"
        )
    return labels


def _render(
    panels: list[np.ndarray],
    panel_titles: Sequence[str] | None,
    class_names: Sequence[str],
    path: str | Path,
    title: str | None,
) -> Path:
    """Place mosaics side by side with class names at the left and write the PNG atomically."""
    mh = panels[0].shape[0]
    rows = len(class_names)
    row_h = (mh - PAD_PX) / rows
    # Room for the longest class name at FONT_PT (about 0.6 em per character, plus a margin).
    margin = 16 + int(np.ceil(max(len(n) for n in class_names) * FONT_PT * 0.6 * DPI / 72))
    top = (TITLE_PX if title else 0) + (PANEL_TITLE_PX if panel_titles else 0)
    width = margin + sum(p.shape[1] for p in panels) + GAP_PX * (len(panels) - 1)
    height = top + mh
    fig, _ = figure(width / DPI, height / DPI, rows=0)
    x = margin
    for k, panel in enumerate(panels):
        # figimage puts pixels on the canvas unresampled, so the PNG holds the exact image data.
        fig.figimage(panel, xo=x, yo=0, origin="upper")
        if panel_titles:
            cx, cy = (x + panel.shape[1] / 2) / width, (mh + PANEL_TITLE_PX / 2) / height
            fig.text(cx, cy, panel_titles[k], ha="center", va="center", fontsize=FONT_PT + 1)
        x += panel.shape[1] + GAP_PX
    for r, name in enumerate(class_names):
        y = mh - PAD_PX - (r + 0.5) * row_h  # rows are drawn top-down, figure y runs bottom-up
        fig.text((margin - 8) / width, y / height, name, ha="right", va="center", fontsize=FONT_PT)
    if title:
        fig.text(0.5, 1 - TITLE_PX / 2 / height, title, ha="center", va="center", fontsize=12)
    return save(fig, path, tight=None)


def save_sample_grid(
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    per_class: int = 10,
    title: str | None = None,
) -> Path:
    """Write a PNG with one row per class (name at the left) of its first `per_class` images.

    Small images are upscaled by an integer factor with nearest neighbour (28 px -> 84 px),
    large ones are downscaled to CELL_PX; a class with fewer images leaves blank cells.
    """
    labels = _check(images, labels, class_names)
    picks = _pick(labels, len(class_names), per_class)
    return _render([_mosaic(images, picks, per_class)], None, class_names, path, title)


def save_paired_grid(
    images_a: np.ndarray,
    images_b: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    titles: tuple[str, str] = ("plain", "guided"),
    per_class: int = 10,
    title: str | None = None,
) -> Path:
    """Write two grids side by side, cell for cell the same seeds (e.g. plain vs entropy-guided)."""
    labels = _check(images_a, labels, class_names)
    if images_b.shape != images_a.shape:
        raise DeliberateError(
            f"paired grid needs images of equal shape, got {images_a.shape} and {images_b.shape}"
        )
    picks = _pick(labels, len(class_names), per_class)
    panels = [_mosaic(images_a, picks, per_class), _mosaic(images_b, picks, per_class)]
    return _render(panels, titles, class_names, path, title)
