"""The project's one door to matplotlib: a pyplot-free figure and an atomic PNG save.

Every plot (a run's report, the cross-run comparison, the theory figures, the sample grids) is
drawn on a `matplotlib.figure.Figure` with its own Agg canvas, so nothing here selects or
switches the global backend of a caller, and no figure is registered with pyplot (nothing to
close). matplotlib is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path

from deliberate.data.pool import atomic_file

DPI = 100
FONT_PT = 10


def figure(
    width: float,
    height: float,
    rows: int = 1,
    cols: int = 1,
    *,
    sharex: bool = False,
    dpi: int = DPI,
):
    """A white (width x height inch) figure and its `rows` x `cols` axes, flat in row order.

    rows = 0 gives a bare canvas (no axes; the sample grids place pixels and text themselves).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display, no pyplot
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    if rows == 0:
        return fig, []
    return fig, fig.subplots(rows, cols, sharex=sharex, squeeze=False).ravel()


def save(fig, path: str | Path, *, dpi: int = DPI, tight: str | None = "layout") -> Path:
    """Write `fig` as a PNG at `path` atomically (a temp name, then a rename); return the path.

    tight = "layout": `fig.tight_layout()` first; "bbox": crop the PNG to what is drawn
    (bbox_inches="tight"), the layout left as the caller set it; None: neither.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight == "layout":
        fig.tight_layout()
    extra = {"bbox_inches": "tight"} if tight == "bbox" else {}
    with atomic_file(path) as f:  # a half-written PNG never carries the final name
        fig.savefig(f, format="png", dpi=dpi, facecolor="white", **extra)
    return path


def plain_log_xticks(ax, ticks) -> None:
    """Put x ticks at `ticks` and label them as plain numbers (not powers) on a log axis."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())  # no "2 x 10^4" between the chosen ticks
