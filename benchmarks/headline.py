"""The headline ratios under the compute-fair protocol (docs/experiments.md; issue 15).

Usage: python benchmarks/headline.py RUN_OR_SWEEP_DIR... [--plot PNG]
       (e.g. the folders of `deliberate sweep configs/fmnist/fair-static.yaml` and `fair-dp.yaml`)

Every finished run contributes one point per (pool size, iteration budget) it measured: its own
result, its budget branches (`learner.budgets`) and, for static runs, its prefix learners
(`practice.prefixes`). Static runs are `per_round: 0`; DP runs have ω > 0 and no oversampling;
other runs are ignored. For each method and pool size the budget is CHOSEN ON VALIDATION: the
one with the highest mean real-val accuracy over the seeds that have every budget. Test
accuracy is only read at the chosen budget. Then:

  (a) images:     the best static test accuracy (any size, its best budget) against the pool
                  DP needs to reach it (DP's curve made monotone, log-linear in pool size);
  (b) iterations: the iterations static needs to reach DP's best accuracy (static's best size
                  per budget, chosen on val, made monotone, log-linear in iterations) against
                  the iterations of DP's best point: the paper's Table 1 analogue;
  (b')            and the other direction, defined whenever DP reaches static's best: the
                  iterations DP needs (its best size per budget, chosen on val, made monotone)
                  to reach the best static accuracy, against the iterations of static's best.

Each ratio is also computed seed by seed (the same chosen budgets), giving its spread.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from deliberate.errors import DeliberateError  # noqa: E402
from deliberate.report.runs import expand_dirs, load_run  # noqa: E402


def points(run: dict) -> list[tuple[int, int, float, float, int]]:
    """(setting, iterations, val, test, pool) of every learner a run trained. The setting is the
    image budget (`practice.max_images`; a static prefix's n): a DP run's pool at a short budget
    can be smaller than it, since its last rounds may come after that budget's cool-down."""
    s = run["summary"]
    own = [{"pool_size": s["pool_size"], "iterations": s["iterations"], "val_acc": s["val_acc"],
            "test_acc": s["test_acc"]}]  # fmt: skip
    size = run["config"]["practice"]["max_images"]
    rows = [(size, r) for r in s.get("budgets") or own]
    for prefix in s.get("prefixes", []):
        rows += [(prefix["pool_size"], r) for r in prefix.get("budgets") or [prefix]]
    return [(n, r["iterations"], r["val_acc"], r["test_acc"], r["pool_size"]) for n, r in rows]


def collect(folders) -> dict:
    """{method: {setting: {iterations: {seed: (val, test, pool)}}}}."""
    grid = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    source = {}  # (method, setting, iterations, seed): the run folder that gave it
    for folder in expand_dirs(folders):
        try:
            run = load_run(folder)
        except DeliberateError as e:
            print(f"skipped: {e}", file=sys.stderr)
            continue
        if run["kind"] != "practice" or run["method"] not in ("static", "DP"):
            continue
        for size, its, val, test, pool in points(run):
            key, cell = (run["method"], size, its, run["seed"]), grid[run["method"]][size][its]
            if key in source and cell[run["seed"]] != (val, test, pool):
                raise SystemExit(f"{source[key]} and {folder} both give {key[0]} {size:,} at "
                                 f"{its:,} iterations, seed {key[3]}, with other results (another"
                                 " warm-up or machine?): pass one of them")  # fmt: skip
            source[key], cell[run["seed"]] = folder, (val, test, pool)
    return grid


def choose(by_budget: dict) -> tuple[int, list[int]]:
    """The budget with the best mean val over the seeds every budget has; and those seeds."""
    seeds = sorted(set.intersection(*(set(v) for v in by_budget.values())))
    if not seeds:
        raise SystemExit("no seed has every budget of a pool size; finish the runs first")
    best = max(by_budget, key=lambda b: (statistics.mean(by_budget[b][s][0] for s in seeds), -b))
    return best, seeds


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f} (1 seed)"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def envelope(curve: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(x, best y so far) by increasing x: more images or iterations never count as worse."""
    out, best = [], -1.0
    for x, y in sorted(curve):
        best = max(best, y)
        out.append((x, best))
    return out


def reaching(curve: list[tuple[float, float]], y: float) -> float | None:
    """x at which a monotone curve first reaches y (log-linear); None when it never does."""
    if y <= curve[0][1]:
        return float(curve[0][0])
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if y0 < y <= y1:
            t = (y - y0) / (y1 - y0)
            return math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0)))
    return None


def ratios(grid, chosen, seed=None) -> dict:
    """Both headline ratios from the means (seed None) or from one seed's numbers."""

    def test(method, pool, its):
        cell = grid[method][pool][its]
        seeds = chosen[method][pool][1] if seed is None else [seed]
        if any(s not in cell for s in seeds):
            return None
        return statistics.mean(cell[s][1] for s in seeds)

    def pool(method, n, its):  # the pool the learners of a setting had at that budget
        return statistics.mean(v[2] for v in grid[method][n][its].values())

    curves = {m: [(pool(m, n, chosen[m][n][0]), test(m, n, chosen[m][n][0])) for n in chosen[m]]
              for m in chosen}  # fmt: skip
    curves = {m: [(n, a) for n, a in c if a is not None] for m, c in curves.items()}
    if not curves["static"] or not curves["DP"]:  # a seed that only one method has finished
        return None
    static, dp = envelope(curves["static"]), envelope(curves["DP"])
    best_static_n, best_static = max(curves["static"], key=lambda p: (p[1], -p[0]))
    need = reaching(dp, best_static)
    dp_n, dp_best = max(curves["DP"], key=lambda p: (p[1], -p[0]))
    dp_its = next(chosen["DP"][n][0] for n in chosen["DP"]
                  if pool("DP", n, chosen["DP"][n][0]) == dp_n)  # fmt: skip
    def per_budget(method):  # its best size at each budget (chosen on val), then monotone
        out = []
        for its in sorted({b for n in grid[method] for b in grid[method][n]}):
            sizes = [n for n in grid[method] if its in grid[method][n]]
            by_val = {n: statistics.mean(v[0] for v in grid[method][n][its].values())
                      for n in sizes}  # fmt: skip
            n = max(by_val, key=by_val.get)
            if (a := test(method, n, its)) is not None:
                out.append((its, a))
        return envelope(out) if out else None

    static_budgets, dp_budgets = per_budget("static"), per_budget("DP")
    static_its = reaching(static_budgets, dp_best) if static_budgets else None
    best_static_its = chosen["static"][best_static_n][0]
    dp_its_to_static = reaching(dp_budgets, best_static) if dp_budgets else None
    return {
        "best_static": (best_static_n, best_static), "dp_images_to_best_static": need,
        "images_ratio": best_static_n / need if need else None,
        "dp_best": (dp_n, dp_its, dp_best), "static_iterations_to_dp_best": static_its,
        "iterations_ratio": static_its / dp_its if static_its else None,
        "static_best_iterations": best_static_its, "dp_iterations_to_best_static": dp_its_to_static,
        "iterations_ratio_at_static_best":
            best_static_its / dp_its_to_static if dp_its_to_static else None,
        "static_curve": static, "dp_curve": dp,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("runs", nargs="+", type=Path, help="run or sweep folders")
    ap.add_argument("--plot", type=Path, default=None, help="write the Fig. 4 analogue here")
    args = ap.parse_args()
    grid = collect(args.runs)
    if not grid["static"] or not grid["DP"]:
        raise SystemExit("need finished static runs (per_round 0) and DP runs (omega > 0)")
    chosen = {m: {n: choose(grid[m][n]) for n in sorted(grid[m])} for m in ("static", "DP")}

    print("Every budget (real val % / real test %, mean of the seeds that have all budgets):\n")
    for method in ("static", "DP"):
        budgets = sorted({b for n in grid[method] for b in grid[method][n]})
        print(f"| {method} pool | " + " | ".join(f"{b:,} it" for b in budgets) + " | chosen |")
        print("|---" * (len(budgets) + 2) + "|")
        for n, (best, seeds) in chosen[method].items():
            cells = []
            for b in budgets:
                cell = grid[method][n].get(b, {})
                if all(s in cell for s in seeds):
                    val = statistics.mean(cell[s][0] for s in seeds)
                    tst = statistics.mean(cell[s][1] for s in seeds)
                    cells.append(f"{100 * val:.2f} / {100 * tst:.2f}")
                else:
                    cells.append("–")
            print(f"| {n:,} | " + " | ".join(cells) + f" | {best:,} |")
        print()
    print("At the budget chosen on validation (DP's pool can be smaller at a short budget: "
          "its last rounds come later):\n")
    print("| method | image budget | pool | iterations | real test %, mean ± sd | per seed | seeds |")
    print("|---|---|---|---|---|---|---|")
    for method in ("static", "DP"):
        for n, (best, seeds) in chosen[method].items():
            tests = [grid[method][n][best][s][1] for s in seeds]
            pools = sorted({grid[method][n][best][s][2] for s in seeds})
            per = ", ".join(f"{100 * t:.2f}" for t in tests)
            print(f"| {method} | {n:,} | {'/'.join(f'{p:,}' for p in pools)} | {best:,} | "
                  f"{fmt(tests)} | {per} | {', '.join(map(str, seeds))} |")  # fmt: skip

    r = ratios(grid, chosen)
    all_seeds = sorted({s for m in chosen for _, seeds in chosen[m].values() for s in seeds})
    per_seed = {s: ratios(grid, chosen, s) for s in all_seeds}
    partial = sorted(s for s, p in per_seed.items() if p is None)
    per_seed = {s: p for s, p in per_seed.items() if p is not None}

    def spread(key):
        vals = [p[key] for p in per_seed.values() if p[key] is not None]
        missing = len(per_seed) - len(vals)
        text = ", ".join(f"{v:.2f}x" for v in vals) or "none"
        text += f" ({missing} seed(s): not reached)" if missing else ""
        return text + (f" (seed(s) {partial}: one method unfinished)" if partial else "")

    n, a = r["best_static"]
    print(f"\n(a) images: best static {100 * a:.2f} % at {n:,} images.")
    if r["images_ratio"] is None:
        dn, dits, da = r["dp_best"]
        print(f"    DP never reaches it: its best is {100 * da:.2f} % ({dn:,} images, {dits:,} it),"
              f" {100 * (a - da):.2f} points short. Per seed: {spread('images_ratio')}")  # fmt: skip
    else:
        print(f"    DP reaches it with {r['dp_images_to_best_static']:,.0f} images: "
              f"{r['images_ratio']:.2f}x fewer. Per seed: {spread('images_ratio')}")  # fmt: skip
    dn, dits, da = r["dp_best"]
    print(f"(b) iterations: DP's best, {100 * da:.2f} % ({dn:,} images), at {dits:,} iterations.")
    if r["iterations_ratio"] is None:
        print(f"    static never reaches it at any budget measured. Per seed: "
              f"{spread('iterations_ratio')}")  # fmt: skip
    else:
        print(f"    static needs {r['static_iterations_to_dp_best']:,.0f} iterations: "
              f"{r['iterations_ratio']:.2f}x DP's. Per seed: {spread('iterations_ratio')}")  # fmt: skip
    its = r["dp_iterations_to_best_static"]
    print(f"    At static's best ({100 * a:.2f} %, {r['static_best_iterations']:,} iterations), "
          + (f"DP needs {its:,.0f} iterations: {r['iterations_ratio_at_static_best']:.2f}x fewer."
             if its else "DP never reaches it at any budget measured.")
          + f" Per seed: {spread('iterations_ratio_at_static_best')}")  # fmt: skip
    if args.plot:
        from deliberate.report.compare import plot_headline

        plot_headline(r["static_curve"], r["dp_curve"], chosen, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
