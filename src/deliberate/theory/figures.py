"""The paper's theory figures from `deliberate.theory`: Fig. 3, Fig. 5c and Fig. 7 [ICML §4, App. A].

Each function computes its curves, writes one PNG and returns the numbers it plotted. The paper
does not report every parameter behind these figures; the defaults below are our choices, the
reasons are in docs/theory.md (SPEC §6.7 and §8, question 10).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deliberate.errors import DeliberateError
from deliberate.report.plots import figure, save
from deliberate.theory.model import KEEP_EASY, KEEP_HARD, STRATEGIES, check_params, predicted_error
from deliberate.theory.simulate import CheckPoint, simulate


@dataclass
class FigureData:
    """What a figure shows: x values, one y array per curve label, and simulation points."""

    path: Path
    x: np.ndarray
    curves: dict[str, np.ndarray]
    points: list[CheckPoint] = field(default_factory=list)


DPI = 130  # the resolution of the theory PNGs (drawn at report.plots.DPI, cropped to what is drawn)


def _keep_label(p: float) -> str:
    return "select all" if p == 1.0 else f"select top {100 * p:g} %"


def fig3(
    out: str | Path,
    *,
    d: int = 512,
    rho: float = 1.0,
    lam: float = 0.01,
    keep: Sequence[float] = (0.1, 0.5, 0.8, 0.9, 1.0),
    m_min: float = 2**9,
    m_max: float = 2**14,
    strategy: str = KEEP_HARD,
) -> FigureData:
    """Fig. 3: accuracy 1 − E_test (Theorem 1) against the selected size m = np, one curve per p.

    For each kept fraction p and selected size m, the pool is n = m/p, so ϕ = dp/m.
    """
    check_params(d=d, lam=lam, rho=rho, p=keep, strategy=strategy)
    if not 0 < m_min < m_max:
        raise DeliberateError(f"m range [{m_min:g}, {m_max:g}] is invalid: need 0 < m_min < m_max")
    powers = np.exp2(np.arange(np.ceil(np.log2(m_min)), np.log2(m_max) + 1e-9))
    m = np.union1d(np.geomspace(m_min, m_max, 160), powers)  # powers of 2 exactly, for tables
    curves = {
        _keep_label(p): 100 * (1 - predicted_error(d, m / p, lam, rho, p, strategy)) for p in keep
    }
    fig, (ax,) = figure(6.0, 4.2)
    for label, acc in curves.items():
        ax.plot(m, acc, label=label, lw=2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("size of selected dataset m = n·p (examples, log₂ scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fig. 3 (Theorem 1): {strategy}, d = {d}, ρ = {rho:g}, λ = {lam:g}")
    ax.grid(alpha=0.3)
    ax.legend(title="kept fraction p")
    path = save(fig, out, dpi=DPI, tight="bbox")
    return FigureData(path=path, x=m, curves=curves)


def fig5c(
    out: str | Path,
    *,
    d: int = 512,
    rho: float = 1.0,
    lam: float = 0.01,
    sizes: Sequence[float] = (1024,),
    ratio_max: float = 18.0,
    strategy: str = KEEP_HARD,
) -> FigureData:
    """Fig. 5c: accuracy against the over-sampling ratio R = n/m = 1/p at a fixed selected size m."""
    check_params(d=d, lam=lam, rho=rho, strategy=strategy)
    if min(sizes) <= 0:
        raise DeliberateError(f"m = {min(sizes):g} is out of range: m must be > 0")
    if not ratio_max > 1:
        raise DeliberateError(f"ratio_max = {ratio_max:g} is out of range: it must be > 1")
    marks = np.array([1.5, 2, 3, 4, 6, 8, 12, 18])
    ratio = np.union1d(np.linspace(1.0, ratio_max, 241), marks[marks < ratio_max])
    curves = {
        f"m = {m:g}": 100 * (1 - predicted_error(d, m * ratio, lam, rho, 1 / ratio, strategy))
        for m in sizes
    }
    fig, (ax,) = figure(6.0, 4.2)
    for label, acc in curves.items():
        (line,) = ax.plot(ratio, acc, lw=2, label=label)
        best = int(np.argmax(acc))
        ax.plot(ratio[best], acc[best], "o", color=line.get_color())
        ax.annotate(f"best R = {ratio[best]:.2g}", (ratio[best], acc[best]), textcoords="offset "
                    "points", xytext=(6, 4), fontsize=8)  # fmt: skip
    ax.set_xlabel("over-sampling ratio R = n/m = 1/p (pool size over selected size)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fig. 5c (Theorem 1): {strategy}, d = {d}, ρ = {rho:g}, λ = {lam:g}")
    ax.grid(alpha=0.3)
    ax.legend(title="selected size (examples)")
    path = save(fig, out, dpi=DPI, tight="bbox")
    return FigureData(path=path, x=ratio, curves=curves)


def fig7(
    out: str | Path,
    *,
    d: int = 350,
    ns: Sequence[int] = (250, 600, 1000),
    lams: Sequence[float] = (1e-6, 1e-2),
    rho: float = 1.0,
    sim_ps: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    trials: int = 16,
    seed: int = 0,
) -> FigureData:
    """Fig. 7: test error against p, keep-hard vs keep-easy; rows λ, columns n; dots = simulation.

    Rows with λ < 1e-3 draw Corollary 1 (λ → 0⁺), the others Theorem 1 at that λ; the simulation
    always uses the row's λ. The dashed line marks the interpolation threshold np = d.
    """
    check_params(d=d, n=ns, lam=lams, rho=rho, p=sim_ps)
    if trials < 0:
        raise DeliberateError(f"trials = {trials} is out of range: use 0 (no simulation) or more")
    p = np.linspace(0.005, 1.0, 400)
    curves: dict[str, np.ndarray] = {}
    points: list[CheckPoint] = []
    selections = [(s, float(q)) for s in STRATEGIES for q in sim_ps]
    for n in ns:
        sim = None
        if trials > 0:
            sim = simulate(d, n, lams, rho, selections, trials=trials, seed=seed)
        for li, lam in enumerate(lams):
            for s in STRATEGIES:
                lam_curve = 0.0 if lam < 1e-3 else lam
                curves[f"n={n} lam={lam:g} {s}"] = predicted_error(d, n, lam_curve, rho, p, s)
            for j, (s, q) in enumerate(selections if sim is not None else []):
                errs = sim[:, j, li]
                se = errs.std(ddof=1) / np.sqrt(trials) if trials > 1 else float("nan")
                pred = float(predicted_error(d, n, lam, rho, q, s))
                points.append(CheckPoint(d, n, lam, rho, q, s, pred, float(errs.mean()), float(se)))

    colors = {KEEP_HARD: "tab:red", KEEP_EASY: "tab:blue"}
    fig, flat = figure(3.6 * len(ns), 3.0 * len(lams), len(lams), len(ns), sharex=True)
    axes = flat.reshape(len(lams), len(ns))
    for li, lam in enumerate(lams):
        for ni, n in enumerate(ns):
            ax = axes[li, ni]
            form = "Corollary 1, λ → 0⁺" if lam < 1e-3 else "Theorem 1"
            for s in STRATEGIES:
                ax.plot(p, curves[f"n={n} lam={lam:g} {s}"], color=colors[s], lw=1.8,
                        label=f"{s} (theory)")  # fmt: skip
                pts = [c for c in points if c.n == n and c.lam == lam and c.strategy == s]
                if pts:
                    ax.errorbar([c.p for c in pts], [c.sim_mean for c in pts],
                                yerr=[c.sim_se for c in pts], fmt="o", ms=3.5, color=colors[s],
                                capsize=2, label=f"{s} (simulation)")  # fmt: skip
            if d / n <= 1:
                ax.axvline(d / n, color="gray", ls="--", lw=1, label="np = d")
            ax.set_title(f"n = {n}, λ = {lam:g} ({form})", fontsize=10)
            ax.grid(alpha=0.3)
            if li == len(lams) - 1:
                ax.set_xlabel("kept fraction p (of the pool)")
            if ni == 0:
                ax.set_ylabel("test error (fraction)")
    handles, labels = [], []
    for ax in axes.flat:  # the union of labels (np = d only shows where d/n < 1)
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.02))
    sim_note = f"{trials} trials per dot, ±1 s.e." if trials > 0 else "no simulation"
    fig.suptitle(f"Fig. 7: test error vs kept fraction, d = {d}, ρ = {rho:g} ({sim_note})")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = save(fig, out, dpi=DPI, tight="bbox")
    return FigureData(path=path, x=p, curves=curves, points=points)
