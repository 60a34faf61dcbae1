"""Figures for a run: sample grids (one row per class), training curves, entropy histograms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deliberate.data.pool import atomic_file
from deliberate.errors import DeliberateError

CELL_PX = 84  # the longer side of each image in a grid: 28 x 28 Fashion-MNIST is upscaled 3x
PAD_PX = 2  # white gap between images
TITLE_PX = 32  # band above the grid for the figure title
PANEL_TITLE_PX = 24  # band above each panel of a paired grid
GAP_PX = 16  # space between the two panels of a paired grid
DPI = 100
FONT_PT = 10


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display, no pyplot
    from matplotlib.figure import Figure

    mh = panels[0].shape[0]
    rows = len(class_names)
    row_h = (mh - PAD_PX) / rows
    # Room for the longest class name at FONT_PT (about 0.6 em per character, plus a margin).
    margin = 16 + int(np.ceil(max(len(n) for n in class_names) * FONT_PT * 0.6 * DPI / 72))
    top = (TITLE_PX if title else 0) + (PANEL_TITLE_PX if panel_titles else 0)
    width = margin + sum(p.shape[1] for p in panels) + GAP_PX * (len(panels) - 1)
    height = top + mh
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=DPI, facecolor="white")
    return path


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


def _figure(width: float, height: float, rows: int = 1):
    """A pyplot-free matplotlib figure (Agg) with `rows` stacked axes sharing x."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, axes


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=DPI, facecolor="white")
    return path


def plot_training_curves(rows: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """Loss and val/test accuracy against iterations, a dashed line at each addition (cf. Fig. 2)."""
    if not rows:
        raise DeliberateError("no metrics rows to plot; train first")
    it = np.array([r["iteration"] for r in rows])
    fig, (acc, loss) = _figure(8, 6, rows=2)
    acc.plot(it, [100 * r["val_acc"] for r in rows], label="real val (decides)")
    tested = [r for r in rows if r.get("test_acc") is not None]
    acc.plot(
        [r["iteration"] for r in tested],
        [100 * r["test_acc"] for r in tested],
        "o-",
        ms=3,
        label="real test (reported)",
    )
    loss.plot(it, [r["train_loss"] for r in rows], color="C3", label="train loss")
    for ax in (acc, loss):
        for r in rows:
            if r.get("adds_round"):
                ax.axvline(r["iteration"], color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=FONT_PT - 1)
    acc.set_ylabel("accuracy (%)")
    loss.set_ylabel("loss")
    loss.set_xlabel("iteration (dashed: a round of new images is added)")
    if title:
        acc.set_title(title)
    return _save(fig, path)


def plot_entropy_histograms(
    entropies: dict[int, np.ndarray], path: str | Path, title: str | None = None
) -> Path:
    """Per round, the learner's entropy on the images it asked for, measured at generation time."""
    if not entropies:
        raise DeliberateError("no entropies to plot: no round was generated by a learner")
    fig, (ax,) = _figure(7, 4)
    top = max(float(np.max(e)) for e in entropies.values())
    bins = np.linspace(0, max(top, 1e-3), 30)
    for k, values in sorted(entropies.items()):
        ax.hist(
            values,
            bins=bins,
            histtype="step",
            lw=1.5,
            label=f"round {k} (mean {np.mean(values):.3f})",
        )
    ax.set_xlabel("learner entropy at generation (nats)")
    ax.set_ylabel("images")
    ax.legend(fontsize=FONT_PT - 1)
    ax.set_title(title or "entropy of each round's images under the learner that requested them")
    return _save(fig, path)


def write_practice_report(
    root: str | Path, rows: Sequence[dict], pool, summary: dict, twins=None
) -> Path:
    """Write `report/` of a practice run: curves, a grid per round, entropies and report.md."""
    out = Path(root) / "report"
    names = pool.class_names or [str(c) for c in range(pool.num_classes)]
    records = pool.records()
    plot_training_curves(rows, out / "curves.png", title=f"{Path(root).name}")
    rounds = sorted({r["round"] for r in records})
    for k in rounds:
        mine = [r for r in records if r["round"] == k]
        ids = [
            r["id"] for c in range(len(names)) for r in [x for x in mine if x["label"] == c][:10]
        ]
        images, labels = pool.get(ids)
        omega = mine[0].get("omega", 0.0)
        save_sample_grid(
            images,
            labels,
            names,
            out / f"samples-round-{k}.png",
            per_class=int(np.bincount(labels).max()),
            title=f"round {k}: {len(mine)} images, omega={omega:g}",
        )
    for k, t in sorted((twins or {}).items()):  # {round: twins/round-k.npz contents}
        save_paired_grid(
            t["plain"],
            t["guided"],
            t["labels"],
            names,
            out / f"plain-vs-guided-round-{k}.png",
            titles=(
                f"plain (omega = 0): learner entropy {t['entropy_plain'].mean():.3f}",
                f"guided: learner entropy {t['entropy_guided'].mean():.3f}",
            ),
            per_class=int(np.bincount(t["labels"]).max()),
            title=f"round {k}: the same seeds without and with entropy guidance",
        )
    entropies = {
        k: np.array([r["entropy"] for r in records if r["round"] == k and "entropy" in r])
        for k in rounds
    }
    entropies = {k: v for k, v in entropies.items() if len(v)}
    if entropies:
        plot_entropy_histograms(entropies, out / "entropy.png")
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    lines = [
        f"# {Path(root).name}",
        "",
        f"Final: pool {summary['pool_size']} images in {summary['rounds'] + 1} round(s), "
        f"{summary['iterations']} iterations; real val {pct(summary['val_acc'])} %, "
        f"real test {pct(summary['test_acc'])} %.",
        "",
    ]
    if summary.get("shifted"):  # deliberate.shifted: the test images under fixed corruptions
        shifted = ", ".join(f"{k} {pct(v)}" for k, v in summary["shifted"].items())
        lines += [f"Shifted real test accuracy (%): {shifted}.", ""]
    lines += [
        "Mean learner entropy at generation; the twins are the round's first images per class",
        "and the same seeds sampled without guidance, scored by the learner that guided the round.",
        "",
        "| round | images | mean entropy | twins: plain | twins: guided |",
        "|---|---|---|---|---|",
    ]
    for k in rounds:
        n = sum(r["round"] == k for r in records)
        mean = f"{entropies[k].mean():.4f}" if k in entropies else "-"
        t = (twins or {}).get(k)
        pair = [f"{t[key].mean():.4f}" if t else "-" for key in ("entropy_plain", "entropy_guided")]
        lines.append(f"| {k} | {n} | {mean} | {' | '.join(pair)} |")
    if summary.get("branches"):
        lines += [
            "",
            "Branch-outs (no data after the fork):",
            "",
            "| round | forked at | pool | val % | test % |",
            "|---|---|---|---|---|",
        ]
        for b in summary["branches"]:
            lines.append(
                f"| {b['round']} | {b['forked_at']} | {b['pool_size']} | "
                f"{pct(b['val_acc'])} | {pct(b['test_acc'])} |"
            )
    prefixes = ("denoiser", "guidance", "sec", "images_", "learner_", "generation")
    compute = {k: v for k, v in summary.items() if k.startswith(prefixes)}
    lines += ["", "Compute: " + ", ".join(f"{k} {v:.4g}" for k, v in compute.items()), ""]
    with atomic_file(out / "report.md") as f:
        f.write("\n".join(lines).encode())
    return out
