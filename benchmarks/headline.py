"""The headline ratio (issue 4): how many fewer generated images DP needs to match static.

Usage: python benchmarks/headline.py --static RUN_DIR... --dp RUN_DIR...

Reads each finished run's last metrics row (real test accuracy on the 9,000 images, final pool
size); groups static runs by pool size and averages over seeds. Two numbers:

* **match ratio**: (smallest static pool reaching the best static mean accuracy) / (DP's mean
  pool), when DP's mean accuracy reaches that best static mean; otherwise "not reached".
* **equivalent static pool**: the static pool size at which the static curve (piecewise linear
  in log pool size, through the per-size means) reaches DP's mean accuracy, divided by DP's pool.
  Beyond the largest static size it is reported as "> largest / DP pool".
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path


def last_row(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    if not rows or rows[-1].get("test_acc") is None:
        raise SystemExit(f"{run}: not finished (no final test accuracy)")
    return rows[-1]


def fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f} (n={len(values)})"


def equivalent_static(curve: list[tuple[int, float]], acc: float) -> tuple[float, str]:
    """Static pool size reaching `acc`, interpolated in log size; (size, qualifier)."""
    if acc <= curve[0][1]:
        return curve[0][0], "<="
    for (n0, a0), (n1, a1) in zip(curve, curve[1:], strict=False):
        if a0 < acc <= a1:
            t = (acc - a0) / (a1 - a0)
            return math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))), "="
    return curve[-1][0], ">"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--static", nargs="+", type=Path, required=True, help="static run folders")
    ap.add_argument("--dp", nargs="+", type=Path, required=True, help="DP run folders (seeds)")
    args = ap.parse_args()
    by_size = defaultdict(list)
    for run in args.static:
        row = last_row(run)
        by_size[row["pool_size"]].append(row["test_acc"])
    dp_rows = [last_row(run) for run in args.dp]
    dp_acc = [r["test_acc"] for r in dp_rows]
    dp_pool = statistics.mean(r["pool_size"] for r in dp_rows)
    print("| run | pool | real test (9k) % |\n|---|---|---|")
    for n in sorted(by_size):
        print(f"| static | {n:,} | {fmt(by_size[n])} |")
    print(f"| DP | {dp_pool:,.0f} | {fmt(dp_acc)} |")
    # A monotone envelope: more static images never count as worse than fewer (noise aside).
    curve, best = [], -1.0
    for n in sorted(by_size):
        best = max(best, statistics.mean(by_size[n]))
        curve.append((n, best))
    best_n = next(n for n, a in curve if a == best)
    dp_mean = statistics.mean(dp_acc)
    print(f"\nbest static: {100 * best:.2f} % at {best_n:,} images (largest tried: {curve[-1][0]:,})")
    if dp_mean >= best:
        print(f"match ratio: DP reaches it with {best_n / dp_pool:.2f}x fewer images")
    else:
        print(f"match ratio: not reached (DP {100 * dp_mean:.2f} % < best static)")
    size, how = equivalent_static(curve, dp_mean)
    how = "" if how == "=" else how + " "
    print(f"equivalent static pool: {how}{size:,.0f} images, {how}{size / dp_pool:.2f}x DP's pool")


if __name__ == "__main__":
    main()
