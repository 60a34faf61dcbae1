"""Minibatch reads: the pool in RAM (`load_all`) vs memory-mapped shards (`images_view`).

Usage: python benchmarks/pool_reads.py POOL_DIR [--batch 64] [--batches 1000]
Prints the median time per batch of each, over 5 repeats, from one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deliberate.data.pool import Pool
from deliberate.training import uniform_sampler


def per_batch(sampler, batch: int, batches: int) -> float:
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(batches):
        sampler(g, batch)
    return (time.perf_counter() - t0) / batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pool")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=1000)
    args = ap.parse_args()
    pool = Pool(args.pool)
    labels = pool.labels()
    ram = uniform_sampler(pool.load_all()[0], labels)
    mapped = uniform_sampler(pool.images_view(), labels)
    times = {"in RAM": [], "memory-mapped": []}
    for _ in range(5):
        times["in RAM"].append(per_batch(ram, args.batch, args.batches))
        times["memory-mapped"].append(per_batch(mapped, args.batch, args.batches))
    print(f"pool {args.pool}: {len(pool)} images in {len(list(pool.root.glob('shards/*.npz')))} shards")
    print("| read | median µs per batch of", args.batch, "|\n|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {1e6 * statistics.median(ts):.0f} |")


if __name__ == "__main__":
    main()
