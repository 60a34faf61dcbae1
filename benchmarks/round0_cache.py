"""One shared round 0: the demo's three methods with and without `--cache`.

Usage: python benchmarks/round0_cache.py [--initial 500] [--out DIR]

Runs `fmnist/tiny` (the shipped generator, 5 DDIM steps, CFG 0.5) as static, DP at ω = 0 and DP,
each with N = --initial plain images in round 0 and 10 training iterations (so no guided round
is added: only round 0 is measured), first without a cache and then with one. Prints, per run,
where round 0 came from, the seconds it took (`seconds_generate` of the first metrics row), the
denoiser evaluations the ledger counts and those the run did not spend, and whether the pool is
byte-identical to the uncached run's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from deliberate.config import load_config
from deliberate.practice import PracticeConfig, run_practice
from deliberate.presets import resolve

METHODS = {"static": ["practice.per_round=0", "guidance.omega=0.0"],
           "DP ω=0": ["guidance.omega=0.0"], "DP": []}  # fmt: skip


def pool_bytes(run: Path) -> dict:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in (run / "pool").rglob("*")
            if p.is_file()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--initial", type=int, default=500, help="N: round 0's images")
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temp folder)")
    args = ap.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="round0-cache-"))
    n = args.initial
    common = ["learner.iterations=10", f"practice.initial={n}", f"practice.max_images={n + 100}"]
    print(f"fmnist/tiny, N = {n}, runs in {root}\n")
    print("| run | round 0 | seconds | denoiser evals (ledger) | not spent | pool = uncached |")
    print("|---|---|---|---|---|---|")
    for cache in (None, root / "cache"):
        for name, sets in METHODS.items():
            folder = root / f"{'cached' if cache else 'plain'}-{name.replace(' ', '-')}"
            extra = [f"cache={json.dumps(str(cache))}"] if cache else []
            cfg = load_config(PracticeConfig, resolve("fmnist/tiny"), [*common, *sets, *extra])
            summary = run_practice(cfg, folder, progress=False)
            first = json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])
            record = summary.get("round0_cache") or {}
            where = "sampled" if not record.get("reused_images") else record["transfer"]
            same = "—" if cache is None else pool_bytes(folder) == pool_bytes(
                root / f"plain-{name.replace(' ', '-')}")  # fmt: skip
            print(f"| {name}{', --cache' if cache else ''} | {where} | "
                  f"{first['seconds_generate']:.1f} | {first['denoiser_evals']:,} | "
                  f"{record.get('denoiser_evals_reused', 0):,} | {same} |")


if __name__ == "__main__":
    main()
