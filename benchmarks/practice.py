"""DP (ω > 0) vs DP (ω = 0) vs static generation at the same budget, over seeds; prints a table.

Usage: python benchmarks/practice.py [--seeds 0 1 2] [--out runs/bench-practice] [--set k=v ...]
Each (variant, seed) is an ordinary resumable run directory, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from deliberate.config import load_config
from deliberate.practice import PracticeConfig, run_practice

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "fmnist"
VARIANTS = {
    "DP ω>0": (CONFIGS / "dp.yaml", []),
    "DP ω=0": (CONFIGS / "dp.yaml", ["guidance.omega=0.0"]),
    "static": (CONFIGS / "static.yaml", []),
}


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace(">", "gt").replace("=", "eq").replace("ω", "w")


def mean_sd(values):
    values = [100 * v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/bench-practice")
    ap.add_argument("--set", action="append", default=[], help="override for every variant")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--omegas", type=float, nargs="*", default=[], help="extra DP ω variants")
    ap.add_argument("--static-sizes", type=int, nargs="*", default=[], help="extra static sizes")
    args = ap.parse_args()
    for w in args.omegas:
        VARIANTS[f"DP ω={w:g}"] = (CONFIGS / "dp.yaml", [f"guidance.omega={w}"])
    for n in args.static_sizes:
        VARIANTS[f"static {n}"] = (CONFIGS / "static.yaml", [f"practice.initial={n}",
                                                             f"practice.max_images={n}"])
    args.variants += [f"DP ω={w:g}" for w in args.omegas] + [f"static {n}" for n in args.static_sizes]
    results = {}
    for seed in args.seeds:  # seeds outermost: a partial benchmark still compares all variants
        for name in args.variants:
            path, overrides = VARIANTS[name]
            cfg = load_config(PracticeConfig, path, [*overrides, *args.set, f"seed={seed}"])
            run_dir = Path(args.out) / f"{_slug(name)}-s{seed}"
            t0 = time.perf_counter()
            summary = run_practice(cfg, run_dir, progress=False)
            summary["wall_s"] = time.perf_counter() - t0
            results.setdefault(name, []).append(summary)
            print(f"{name} seed {seed}: pool {summary['pool_size']}, val {summary['val_acc']:.4f}, "
                  f"test {summary['test_acc']:.4f} ({summary['wall_s']:.0f} s)", flush=True)
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"seeds {args.seeds}, {time.strftime('%Y-%m-%d')}")
    print("\n| variant | final pool | rounds | real val % | real test (9k) % |\n|---|---|---|---|---|")
    for name, rows in results.items():
        pools = sorted({r["pool_size"] for r in rows})
        rounds = sorted({r["rounds"] for r in rows})
        print(f"| {name} | {pools} | {rounds} | {mean_sd([r['val_acc'] for r in rows])} | "
              f"{mean_sd([r['test_acc'] for r in rows])} |")
    (Path(args.out) / "summary.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
