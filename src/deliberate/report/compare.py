"""`deliberate report RUN_DIR...`: the paper's comparisons, from the runs' files alone.

Reads each run folder's config.yaml, summary.json, metrics.jsonl (and a sweep folder's
sweep.json) and writes, as far as the runs given allow:

    scaling.png    real test accuracy vs generated images, log x: static vs DP (Fig. 4)
    prune.png      accuracy vs oversampling ratio R, DP at its pool size for reference (Fig. 5a)
    compute.png    accuracy vs generation compute, prune vs DP vs static (Fig. 5d)
    omega.png      accuracy (clean and shifted) vs guidance scale omega (Fig. 5b, Table 3)
    curves.png     val accuracy and pool size vs iteration, additions marked (Fig. 2)
    hardness.png   error on each round's images when added and at the end (Fig. 6)
    hardness-stages.png  the same under the learner at every plateau (runs with branch-outs)
    shifted.png    accuracy on each shifted test set (the IN-Sketch / IN-R analogue)
    report.md      the tables and the plots

Runs with the same label (method and knobs, e.g. "DP ω=0.02") are seeds of one setting: points
show their mean, error bars one standard deviation.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from deliberate.data.pool import atomic_file
from deliberate.data.shifted import DESCRIPTIONS, SHIFTS
from deliberate.errors import DeliberateError
from deliberate.report.plots import FONT_PT, figure, plain_log_xticks, save
from deliberate.report.runs import by_label, expand_dirs, generated, load_run, mean_sd, series
from deliberate.report.tables import cost_table, quality_table, results_table, shifted_table

STYLE = {"static": ("C0", "o"), "DP": ("C3", "s"), "DP ω=0": ("C2", "^"), "prune": ("C1", "D"),
         "prune in loop": ("C5", "P")}  # fmt: skip


def _plot_series(ax, points, label, method, **kw):
    x, m, s = series(points)
    if not len(x):
        return
    color, marker = STYLE.get(method, ("C4", "v"))
    ax.errorbar(x, 100 * m, yerr=100 * s, label=label, color=kw.pop("color", color),
                marker=marker, capsize=3, ms=5, **kw)  # fmt: skip


def _finish(ax, title: str, xlabel: str, ylabel: str = "real test accuracy (%)"):
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=FONT_PT - 1, loc="best")


# ------------------------------------------------------------------------------------ plots


def scaling_lines(runs: list[dict]) -> dict[str, tuple[str, list[tuple[int, float]]]]:
    """Fig. 4's curves: label -> (method, [(generated images, test accuracy)]).

    All static sizes form one curve; every other setting (its label) one curve, with a point per
    final pool size and per branch-out. Equal x are seeds, averaged when plotted."""
    lines: dict[str, tuple[str, list]] = {}
    for r in runs:
        label = "static" if r["method"] == "static" else r["label"]
        points = lines.setdefault(label, (r["method"], []))[1]
        points.append((generated(r), r["summary"]["test_acc"]))
        points += [(b["pool_size"], b["test_acc"]) for b in r["summary"].get("branches", [])]
    return lines


def plot_scaling(runs: list[dict], path: Path) -> Path | None:
    """Fig. 4: real test accuracy vs generated images (DP's branch-outs add points)."""
    lines = scaling_lines(runs)
    if not lines:
        return None
    fig, (ax,) = figure(8, 5)
    for label, (method, points) in lines.items():
        _plot_series(ax, points, label, method, ls="-" if method != "prune" else ":")
    ax.set_xscale("log")
    _finish(ax, "Scaling: accuracy vs number of generated images (Fig. 4 analogue)",
            "generated images (log scale; DP: final pool and branch-outs; prune: candidates + N)")  # fmt: skip
    return save(fig, path)


def plot_headline(static: list, dp: list, chosen: dict, path: Path) -> Path:
    """Fig. 4 under the compute-fair protocol: each method's accuracy per pool size at the
    iteration budget chosen on validation (monotone curves; budgets in the labels)."""
    fig, (ax,) = figure(8, 5)
    for method, curve in (("static", static), ("DP", dp)):
        color, marker = STYLE[method]
        xs, ys = [n for n, _ in curve], [100 * a for _, a in curve]
        ax.plot(xs, ys, color=color, marker=marker, label=method)
        for n, a in zip(xs, ys, strict=True):
            ax.annotate(f"{chosen[method][n][0] // 1000}k it", (n, a), textcoords="offset points",
                        xytext=(4, -10), fontsize=FONT_PT - 2, color=color)  # fmt: skip
    ax.set_xscale("log")
    plain_log_xticks(ax, sorted({n for n, _ in static} | {n for n, _ in dp}))
    _finish(ax, "Accuracy vs generated images, each at its best budget (chosen on val)",
            "generated images (log scale)")  # fmt: skip
    return save(fig, path)


def plot_prune(runs: list[dict], path: Path) -> Path | None:
    """Fig. 5a: prune accuracy vs oversampling ratio; DP and static as reference lines.

    Two prune protocols may appear: the separate baseline (`deliberate prune`: a scorer, then a
    fresh learner) and the in-loop one (`practice.oversample`: the learner scores its rounds)."""
    prune = [r for r in runs if r["kind"] == "prune"]
    in_loop = [r for r in runs if r["method"] == "prune in loop"]
    if not prune and not in_loop:
        return None
    fig, (ax,) = figure(8, 5)
    if prune:
        _plot_series(ax, [(r["summary"]["ratio"], r["summary"]["test_acc"]) for r in prune],
                     "oversample-then-prune (scorer, then a fresh learner)", "prune")  # fmt: skip
    if in_loop:
        points = [
            (r["config"]["practice"]["oversample"], r["summary"]["test_acc"]) for r in in_loop
        ]
        _plot_series(ax, points, "prune in loop (the learner selects its rounds)", "prune in loop")
    prune += in_loop
    refs = [r for r in runs if r["kind"] != "prune" and r["method"] != "prune in loop"]
    for i, (label, group) in enumerate(by_label(refs).items()):
        m, _ = mean_sd([r["summary"]["test_acc"] for r in group])
        pools = sorted({r["summary"]["pool_size"] for r in group})
        color = STYLE.get(group[0]["method"], ("C4",))[0] if i < 6 else None
        ax.axhline(100 * m, ls="--", lw=1, color=color,
                   label=f"{label} (pool {'/'.join(map(str, pools))})")  # fmt: skip
    ax.set_xscale("log", base=2)
    ratios = [r["summary"].get("ratio") or r["config"]["practice"]["oversample"] for r in prune]
    plain_log_xticks(ax, sorted(set(ratios)))
    sel = sorted({r["summary"]["pool_size"] for r in prune})
    _finish(ax, f"Oversample-then-prune: accuracy vs oversampling ratio (selected pool {sel})",
            "oversampling ratio R = candidates / kept (log2 scale)")  # fmt: skip
    return save(fig, path)


def plot_compute(runs: list[dict], path: Path) -> Path | None:
    """Fig. 5d: accuracy vs generation compute (denoiser-evaluation equivalents)."""
    if not any(r["summary"].get("generation_compute") for r in runs):
        return None
    fig, (ax,) = figure(8, 5)
    seen = set()
    for label, group in by_label(runs).items():
        method = group[0]["method"]
        color, marker = STYLE.get(method, ("C4", "v"))
        (x, xs), (y, ys) = (mean_sd([r["summary"].get(k) for r in group]) for k in
                            ("generation_compute", "test_acc"))  # fmt: skip
        ax.errorbar(x, 100 * y, xerr=xs if len(group) > 1 else None,
                    yerr=100 * ys if len(group) > 1 else None, color=color, marker=marker,
                    ms=6, capsize=3, ls="none", label=None if method in seen else method)  # fmt: skip
        seen.add(method)
        ax.annotate(label, (x, 100 * y), fontsize=FONT_PT - 2, xytext=(4, 4),
                    textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    _finish(ax, "Accuracy vs generation compute (Fig. 5d analogue)",
            "generation compute (denoiser-evaluation equivalents, log scale)")  # fmt: skip
    return save(fig, path)


def plot_omega(runs: list[dict], path: Path) -> Path | None:
    """Accuracy vs omega, one line per DP variant (patience, sampling) (Fig. 5b, Table 3)."""
    variants = defaultdict(list)
    for r in runs:
        if r["method"] in ("DP", "DP ω=0"):
            variants[r["label"].partition(", ")[2]].append(r)  # the label less its omega
    variants = {v: g for v, g in variants.items() if len({r["omega"] for r in g}) > 1}
    if not variants:
        return None
    fig, (ax,) = figure(8, 5)
    for i, (variant, group) in enumerate(variants.items()):
        name = f"DP{', ' + variant if variant else ''}"
        color = f"C{(2 * i + 3) % 10}"
        clean = [(r["omega"], r["summary"]["test_acc"]) for r in group]
        shifted = [(r["omega"], r["summary"].get("shifted", {}).get("mean")) for r in group]
        _plot_series(ax, clean, f"{name}: clean test", "DP", color=color)
        _plot_series(ax, shifted, f"{name}: shifted test (mean of 6)", "DP", ls="--", color=color)
    sizes = {r["summary"].get("pool_size") for g in variants.values() for r in g}
    static = [r for r in runs if r["method"] == "static" and r["summary"].get("pool_size") in sizes]
    if static:  # the static baseline at DP's final pool size
        m, _ = mean_sd([r["summary"]["test_acc"] for r in static])
        ax.axhline(100 * m, color="C0", ls=":", label="static (clean test)")
    _finish(ax, "Guidance scale ablation: accuracy vs omega (omega = 0: no guidance)",
            "entropy-guidance scale omega (relative step |dx| / |x_t|)")  # fmt: skip
    return save(fig, path)


def plot_curves(runs: list[dict], path: Path) -> Path | None:
    """Fig. 2: val accuracy and pool size vs iteration; markers where a round was added."""
    first = {}
    for r in runs:
        if r["metrics"]:
            first.setdefault(r["label"], r)  # one seed per setting keeps the plot readable
    if not first:
        return None
    fig, (acc, pool) = figure(9, 7, rows=2)
    for i, (label, r) in enumerate(first.items()):
        rows = r["metrics"]
        it = [x["iteration"] for x in rows]
        color = f"C{i % 10}"
        acc.plot(
            it, [100 * x["val_acc"] for x in rows], color=color, label=f"{label} (seed {r['seed']})"
        )
        pool.plot(it, [x["pool_size"] for x in rows], color=color, label=label)
        adds = [x for x in rows if x.get("adds_round")]
        acc.plot([x["iteration"] for x in adds], [100 * x["val_acc"] for x in adds], "v",
                 color=color, ms=8)  # fmt: skip
    acc.plot([], [], "v", color="grey", label="round added after this evaluation")
    acc.set_title("Training curves: real validation accuracy and pool size (Fig. 2 analogue)")
    acc.set_ylabel("real val accuracy (%)")
    pool.set_ylabel("pool size (images)")
    pool.set_xlabel("optimiser iteration")
    for ax in (acc, pool):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=FONT_PT - 1, loc="best")
    return save(fig, path)


def plot_hardness(runs: list[dict], path: Path) -> Path | None:
    """Fig. 6: per round, the error on its images when added and under the final learner."""
    dp = [r for r in runs if r["method"] in ("DP", "DP ω=0", "prune")]
    groups = {lab: g for lab, g in by_label(dp).items()
              if any(e.get("error_when_added") is not None for r in g
                     for e in r["summary"].get("round_errors", []))}  # fmt: skip
    if not groups:
        return None
    fig, (ax,) = figure(8, 5)
    for i, (label, group) in enumerate(groups.items()):
        color = f"C{i % 10}"
        added, final = [], []
        for r in group:
            for e in r["summary"]["round_errors"]:
                if e["round"] >= 1:
                    added.append((e["round"], e["error_when_added"]))
                final.append((e["round"], e["error_final"]))
        for pts, ls, what in ((added, "-", "when added"), (final, "--", "final learner")):
            x, m, s = series(pts)
            ax.errorbar(x, 100 * m, yerr=100 * s, color=color, ls=ls, marker="o", capsize=3,
                        label=f"{label}: {what}")  # fmt: skip
    ax.set_xticks(sorted({e["round"] for g in groups.values() for r in g
                          for e in r["summary"]["round_errors"]}))  # fmt: skip
    _finish(ax, "Error on each round's images: when added vs after training (Fig. 6 analogue)",
            "round (0 = initial plain images; prune: 1 = kept candidates)",
            "learner error on the round's images (%)")  # fmt: skip
    return save(fig, path)


def plot_stages(runs: list[dict], path: Path) -> Path | None:
    """Fig. 6 over time: each round's error under the learner at every plateau, then the final.

    Needs branch-outs (their fork checkpoints are the learners at the plateaus); draws the first
    such run, preferring a guided one.
    """
    ordered = sorted(runs, key=lambda r: r["method"] != "DP")  # a guided run if there is one
    run = next((r for r in ordered if any("error_by_stage" in e
                                       for e in r["summary"].get("round_errors", []))), None)  # fmt: skip
    if run is None:
        return None
    errors = [e for e in run["summary"]["round_errors"] if "error_by_stage" in e]
    stages = sorted({int(j) for e in errors for j in e["error_by_stage"]})
    fig, (ax,) = figure(8, 5)
    x = np.arange(len(stages) + 1)
    for e in errors:
        k = e["round"]
        y = [100 * e["error_by_stage"][str(j)] for j in stages] + [100 * e["error_final"]]
        line = ax.plot(x, y, "o-", label=f"round {k} images" + (" (plain)" if k == 0 else ""))[0]
        if k - 1 in stages:
            i = stages.index(k - 1)
            ax.plot(x[i], y[i], "*", ms=16, color=line.get_color())
    ax.plot([], [], "*", ms=12, color="grey", ls="none", label="learner that requested the round")
    ax.set_xticks(x, [f"plateau {j}\n(asks round {j + 1})" for j in stages] + ["final"])
    _finish(ax, f"Error on each round's images as training goes on (Fig. 6 analogue; {run['name']})",
            "learner: the EMA at each plateau (branch-out checkpoint), then the final learner",
            "error on the round's images (%)")  # fmt: skip
    return save(fig, path)


def plot_shifted(runs: list[dict], path: Path) -> Path | None:
    """Accuracy on the clean and each shifted test set, one bar group per test set."""
    groups = {lab: g for lab, g in by_label(runs).items() if g[0]["summary"].get("shifted")}
    if not groups:
        return None
    sets = ["clean", *SHIFTS, "mean"]
    fig, (ax,) = figure(10, 5)
    width = 0.8 / len(groups)
    for i, (label, group) in enumerate(groups.items()):
        vals = [
            mean_sd(
                [
                    r["summary"]["test_acc"] if s == "clean" else r["summary"]["shifted"][s]
                    for r in group
                ]
            )  # fmt: skip
            for s in sets
        ]
        x = np.arange(len(sets)) + (i - (len(groups) - 1) / 2) * width
        sd = [100 * s for _, s in vals] if len(group) > 1 else None  # one seed: no error bar
        ax.bar(x, [100 * m for m, _ in vals], width, yerr=sd, capsize=2,
               label=label, color=f"C{i % 10}")  # fmt: skip
    ax.set_xticks(np.arange(len(sets)), sets)
    _finish(ax, "Accuracy on the real test set (9,000) and its shifted copies (1,500 each)",
            "test set (shifted copies: deliberate.data.shifted)")  # fmt: skip
    return save(fig, path)


def write_report(paths, out: str | Path, title: str | None = None, quality: bool = True) -> Path:
    """Load the runs (sweep folders expand), write every plot they support and report.md.

    With `quality`, each Fashion-MNIST run's pool is measured against the real test images
    (deliberate.quality: fidelity, FD, precision/recall/density/coverage; cached per run).
    """
    out = Path(out)
    runs = [load_run(p) for p in expand_dirs(paths)]
    if not runs:
        raise DeliberateError("no runs to report; pass run or sweep folders")
    note = None
    if quality:
        from deliberate.quality import attach_quality

        note = attach_quality(runs)
    plots = {
        "scaling.png": plot_scaling,
        "prune.png": plot_prune,
        "compute.png": plot_compute,
        "omega.png": plot_omega,
        "curves.png": plot_curves,
        "hardness.png": plot_hardness,
        "hardness-stages.png": plot_stages,
        "shifted.png": plot_shifted,
    }
    made = [name for name, fn in plots.items() if fn(runs, out / name) is not None]
    lines = [f"# {title or 'Results'}", "", f"{len(runs)} run(s): "
             + ", ".join(f"`{os.path.relpath(r['dir'], out)}`" for r in runs), ""]  # fmt: skip
    lines += ["## Results (mean ± sd over seeds)", "", *results_table(runs), ""]
    cost = cost_table(runs)
    lines += [
        "Training images: the pool the final learner trained on. Generated: images sampled "
        "(prune: N + R × M candidates). Generation compute: denoiser-evaluation equivalents "
        "(guidance backward and learner scoring included; see `deliberate.accounting`). Wall s: "
        "generation + training + evaluation seconds on the machine that ran it.",
        "",
        *(["## DP vs oversample-then-prune (Fig. 5d)", "", *cost, ""] if cost else []),
    ]
    if len(shifted := shifted_table(runs)) > 2:  # header + rule: no run has the shifted suite
        lines += ["## Shifted test sets (accuracy %)", "", *shifted, "",
                  "Shifts: " + "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items()) + ".",
                  ""]  # fmt: skip
    if qual := quality_table(runs):
        lines += ["## Pool quality (judge features vs the real test images)", "", *qual, "",
                  "A judge trained on the 60k real training images; k = 5 nearest neighbours; "
                  "precision/density measure realism, recall/coverage diversity "
                  "(`deliberate.quality`).", ""]  # fmt: skip
    elif note:
        lines += [note, ""]
    for name in made:
        lines += [f"![{name}]({name})", ""]
    grids = [r for r in runs if (r["report_dir"] / "plain-vs-guided-round-1.png").exists()]
    if grids:
        rel = os.path.relpath(grids[0]["report_dir"] / "plain-vs-guided-round-1.png", out)
        lines += [f"Plain vs guided images of the same seeds ({grids[0]['label']}):", "",
                  f"![plain vs guided]({rel})", ""]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "report.md") as f:
        f.write("\n".join(lines).encode())
    return out / "report.md"
