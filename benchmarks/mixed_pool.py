"""Is it DP's images or DP's schedule? (issue 15, item 6): train once on DP's final pool, fixed.

Usage: python benchmarks/mixed_pool.py DP_RUN STATIC_RUN [--iterations N] [--threads 1]

DP's learner sees its guided images only from the round that made them on. Here a fresh learner
trains on DP_RUN's final pool (its plain round 0 and its guided rounds) from the first step, as
a static pool: the same recipe (DP_RUN's `learner` settings, WSD at N iterations, the run's
seed), drawn uniformly. The control trains the same way on the first as many images of
STATIC_RUN's pool (plain images of the same seed plan, as the static prefix learners use). Both
are scored with the EMA weights on the real validation and test sets the runs used. If the
fixed DP pool beats the fixed plain pool by about what DP beat static, the gain is in the
images; if it does not, it comes from when they are added.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from deliberate.config import from_dict
from deliberate.data import load_split
from deliberate.data.pool import Pool
from deliberate.learner import accuracy, build_learner
from deliberate.practice import PracticeConfig
from deliberate.training import Trainer, cpu_rng, uniform_sampler


def train_fixed(cfg: PracticeConfig, pool: Pool, n: int, iterations: int, split) -> dict:
    """A learner trained as the loop trains one, on the pool's first n images from step 0."""
    lrn = cfg.learner
    shape = pool.meta["image_shape"]
    c, size = (shape[2], shape[0]) if len(shape) == 3 else (1, shape[0])
    with cpu_rng(cfg.seed):  # the loop's initial weights for this seed
        net = build_learner(lrn.arch, int(pool.meta["num_classes"]), c, size,
                            input_size=lrn.input_size or None)  # fmt: skip
    trainer = Trainer(net, lrn.train_config(cfg.practice.eval_every, cfg.seed, iterations))
    sampler = uniform_sampler(pool.images_view(limit=n), pool.labels()[:n])
    t0 = time.perf_counter()
    while trainer.step_count < iterations:
        trainer.train_steps(sampler, min(500, iterations - trainer.step_count))
    rounds = np.bincount(pool.column("round")[:n]).tolist()
    return {
        "images": n, "images_per_round": rounds, "iterations": iterations,
        "val_acc": accuracy(trainer.ema, split.val_images, split.val_labels),
        "test_acc": accuracy(trainer.ema, split.test_images, split.test_labels),
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dp_run", type=Path)
    ap.add_argument("static_run", type=Path)
    ap.add_argument("--iterations", type=int, default=0,
                    help="0: the DP run's own iterations")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = from_dict(PracticeConfig, yaml.safe_load((args.dp_run / "config.yaml").read_text()))
    dp, static = Pool(args.dp_run / "pool"), Pool(args.static_run / "pool")
    n = len(dp)
    if len(static) < n:
        raise SystemExit(f"{args.static_run} holds {len(static)} images; DP's pool has {n}")
    iterations = args.iterations or cfg.learner.iterations
    shape = dp.meta["image_shape"]  # (H, W) or (H, W, C)
    split, _ = load_split(cfg.data, cfg.data_dir, (shape[2] if len(shape) == 3 else 1, *shape[:2]))
    rows = {
        "DP's pool, fixed": train_fixed(cfg, dp, n, iterations, split),
        "plain pool, fixed": train_fixed(cfg, static, n, iterations, split),
    }
    print(f"seed {cfg.seed}, {n} images, {iterations} iterations of batch "
          f"{cfg.learner.batch_size}, {torch.get_num_threads()} thread(s)\n")  # fmt: skip
    print("| pool, trained from step 0 | images per round | real val % | real test % |\n"
          "|---|---|---:|---:|")  # fmt: skip
    for name, r in rows.items():
        print(f"| {name} | {r['images_per_round']} | {100 * r['val_acc']:.2f} | "
              f"{100 * r['test_acc']:.2f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"seed": cfg.seed, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
