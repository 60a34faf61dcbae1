"""The headline ratio (issue 4; Fig. 4 / SPEC §5.4): DP's images to reach the best static accuracy.

Usage: python benchmarks/headline.py RUN_OR_SWEEP_DIR...
       (e.g. the folders of `deliberate sweep configs/fmnist/headline.yaml`)

Reads each finished run's summary: static runs (`per_round: 0`) and DP runs (ω > 0, no
oversampling) are grouped by final pool size and averaged over seeds; other runs are ignored.
Each method's curve is its per-size mean accuracy made monotone (more images never count as
worse: noise aside), interpolated linearly in log pool size. The paper's ratio (§5.1: "DP reaches
the best static accuracy with 400k images, 7.5x less data") is

    ratio = (smallest static pool reaching the best static mean) / (DP pool reaching that mean)

and, the other way round, the static pool that equals each DP point's accuracy.
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


def fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"


def envelope(groups: dict[int, list[float]]) -> list[tuple[int, float]]:
    """(pool, best mean so far) by increasing pool: the monotone curve."""
    curve, best = [], -1.0
    for n in sorted(groups):
        best = max(best, statistics.mean(groups[n]))
        curve.append((n, best))
    return curve


def pool_reaching(curve: list[tuple[int, float]], acc: float) -> float | None:
    """Pool size at which the curve first reaches `acc` (log-linear); None when it never does."""
    if acc <= curve[0][1]:
        return float(curve[0][0])
    for (n0, a0), (n1, a1) in zip(curve, curve[1:], strict=False):
        if a0 < acc <= a1:
            t = (acc - a0) / (a1 - a0)
            return math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))
    return None


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", type=Path, help="run or sweep folders")
    args = ap.parse_args()
    groups = {"static": defaultdict(list), "DP": defaultdict(list)}
    seeds = {"static": defaultdict(list), "DP": defaultdict(list)}
    for folder in expand_dirs(args.runs):
        try:
            run = load_run(folder)
        except DeliberateError as e:
            print(f"skipped: {e}", file=sys.stderr)
            continue
        if run["kind"] == "practice" and run["method"] in groups:
            groups[run["method"]][run["summary"]["pool_size"]].append(run["summary"]["test_acc"])
            seeds[run["method"]][run["summary"]["pool_size"]].append(run["seed"])
    if not groups["static"] or not groups["DP"]:
        raise SystemExit("need finished static runs (per_round 0) and DP runs (omega > 0)")
    print("| method | pool | real test (9k) %, mean ± sd | seeds |\n|---|---|---|---|")
    for method, by_size in groups.items():
        for n in sorted(by_size):
            s = ", ".join(map(str, sorted(seeds[method][n])))
            print(f"| {method} | {n:,} | {fmt(by_size[n])} | {s} |")
    static, dp = envelope(groups["static"]), envelope(groups["DP"])
    best = static[-1][1]
    best_n = next(n for n, a in static if a == best)
    print(f"\nbest static: {100 * best:.2f} % at {best_n:,} images (largest: {static[-1][0]:,})")
    need = pool_reaching(dp, best)
    if need is None:
        print(f"DP never reaches it: best DP {100 * dp[-1][1]:.2f} % at {dp[-1][0]:,} images")
    else:
        print(f"DP reaches it with {need:,.0f} images: **{best_n / need:.2f}x fewer** (paper 3.4x)")
    print("\n| DP pool | DP % | static pool with that accuracy | static / DP |\n|---|---|---|---|")
    for n, a in dp:
        eq = pool_reaching(static, a)
        if eq is None:
            print(f"| {n:,} | {100 * a:.2f} | > {static[-1][0]:,} | > {static[-1][0] / n:.2f}x |")
        else:
            print(f"| {n:,} | {100 * a:.2f} | {eq:,.0f} | {eq / n:.2f}x |")


if __name__ == "__main__":
    main()
