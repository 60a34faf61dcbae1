"""The markdown tables of `deliberate report`: results, DP vs prune cost, shifted test sets."""

from __future__ import annotations

from deliberate.data.shifted import SHIFTS
from deliberate.report.runs import by_label, fmt_mean_sd, generated, mean_sd


def results_table(runs: list[dict]) -> list[str]:
    """Markdown rows: one per setting, mean ± sd over its seeds."""
    lines = [
        "| setting | seeds | training images | generated | discarded | iterations | "
        "real val % | real test % | shifted mean % | generation compute | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, g in by_label(runs).items():
        s = [r["summary"] for r in g]
        pools = "/".join(str(x) for x in sorted({x["pool_size"] for x in s}))
        gen = "/".join(str(x) for x in sorted({generated(r) for r in g}))
        disc = "/".join(str(x) for x in sorted({x.get("images_discarded", 0) for x in s}))
        its = "/".join(str(x) for x in sorted({x["iterations"] for x in s}))
        comp = mean_sd([x.get("generation_compute") for x in s])[0]
        wall = mean_sd([sum(x.get(k, 0) for k in x if k.startswith("seconds_") and k != "seconds_guidance")
                    for x in s])[0]  # fmt: skip
        lines.append(
            f"| {label} | {len(g)} | {pools} | {gen} | {disc} | {its} | "
            f"{fmt_mean_sd([x['val_acc'] for x in s])} | {fmt_mean_sd([x['test_acc'] for x in s])} | "
            f"{fmt_mean_sd([x.get('shifted', {}).get('mean') for x in s])} | {comp:.3g} | {wall:.0f} |"
        )
    return lines


def cost_table(runs: list[dict]) -> list[str]:
    """Prune vs guided DP at the same training pool: accuracy difference and compute ratio."""
    groups = by_label(runs)
    prune = {lab: g for lab, g in groups.items() if g[0]["method"] == "prune"}
    dp = {lab: g for lab, g in groups.items() if g[0]["method"] == "DP"}
    lines = []
    for plab, pg in prune.items():
        pool = mean_sd([r["summary"]["pool_size"] for r in pg])[0]
        for dlab, dg in dp.items():
            if abs(mean_sd([r["summary"]["pool_size"] for r in dg])[0] - pool) > 0.05 * pool:
                continue  # only at (about) the same selected size
            pa, pc = (
                mean_sd([r["summary"].get(k) for r in pg])[0]
                for k in ("test_acc", "generation_compute")
            )
            da, dc = (
                mean_sd([r["summary"].get(k) for r in dg])[0]
                for k in ("test_acc", "generation_compute")
            )
            lines.append(
                f"| {dlab} | {plab} | {pool:.0f} | {100 * (da - pa):+.2f} | {pc / dc:.2f}× |"
            )
    if not lines:
        return []
    return ["| DP | prune | training images | DP − prune test acc (points) | prune / DP generation compute |",
            "|---|---|---|---|---|", *lines]  # fmt: skip


def shifted_table(runs: list[dict]) -> list[str]:
    sets = [*SHIFTS, "mean"]
    lines = ["| setting | clean | " + " | ".join(sets) + " |", "|---" * (len(sets) + 2) + "|"]
    for label, g in by_label(runs).items():
        s = [r["summary"] for r in g if r["summary"].get("shifted")]
        if s:
            cells = [fmt_mean_sd([x["shifted"][k] for x in s], digits=1) for k in sets]
            lines.append(f"| {label} | {fmt_mean_sd([x['test_acc'] for x in s], digits=1)} | "
                         + " | ".join(cells) + " |")  # fmt: skip
    return lines


QUALITY = ("fidelity", "fd", "precision", "recall", "density", "coverage")


def _quality_cells(rows: list[dict]) -> str:
    cells = []
    for key in QUALITY:
        scale, digits = (1.0, 2) if key == "fd" else (100.0, 1)
        cells.append(fmt_mean_sd([r[key] for r in rows], scale=scale, digits=digits))
    return " | ".join(cells)


def quality_table(runs: list[dict]) -> list[str]:
    """Pool quality per setting (deliberate.quality) and, for DP, per round; [] if unmeasured."""
    groups = {}  # one row per setting AND pool size (DP runs of several sizes share a label)
    for lab, g in by_label(runs).items():
        for r in g:
            if "quality" in r:
                n = r["summary"]["pool_size"]
                key = lab if f"{n:,}" in lab else f"{lab}, {n:,} images"
                groups.setdefault(key, []).append(r)
    if not groups:
        return []
    head = "| fidelity % | FD | precision % | recall % | density % | coverage % |"
    lines = ["| setting | seeds | images | " + head.lstrip("| "), "|---" * 9 + "|"]
    for label, g in groups.items():
        q = [r["quality"]["pool"] for r in g]
        lines.append(f"| {label} | {len(g)} | {q[0]['images']} | {_quality_cells(q)} |")
        for n in sorted(g[0]["quality"].get("prefixes", {}), key=int):  # static prefix pools
            q = [r["quality"]["prefixes"][n] for r in g if n in r["quality"].get("prefixes", {})]
            lines.append(f"| {label}, first {int(n):,} | {len(q)} | {q[0]['images']} | "
                         f"{_quality_cells(q)} |")  # fmt: skip
    rounds = [(lab, g) for lab, g in groups.items() if "rounds" in g[0]["quality"]]
    if rounds:
        lines += ["", "Per round (DP: round 0 is plain, rounds >= 1 guided by the learner then):", "",
                  "| setting | round | images | " + head.lstrip("| "), "|---" * 9 + "|"]  # fmt: skip
        for label, g in rounds:
            for k in sorted(g[0]["quality"]["rounds"], key=int):
                q = [r["quality"]["rounds"][k] for r in g if k in r["quality"]["rounds"]]
                lines.append(f"| {label} | {k} | {q[0]['images']} | {_quality_cells(q)} |")
    accs = [(lab, [r["quality"]["per_class_test_acc"] for r in g
                   if "per_class_test_acc" in r["quality"]]) for lab, g in groups.items()]  # fmt: skip
    accs = [(lab, a) for lab, a in accs if a]
    if accs:
        n = len(accs[0][1][0])
        lines += ["", "Per-class real test accuracy % of the final learner (mean over seeds):", "",
                  "| setting | " + " | ".join(str(c) for c in range(n)) + " |",
                  "|---" * (n + 1) + "|"]  # fmt: skip
        for label, a in accs:
            means = [100 * sum(x[c] for x in a) / len(a) for c in range(n)]
            lines.append(f"| {label} | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    return lines
