"""How fast and how well `small_resnet` trains on REAL Fashion-MNIST on this machine's CPU.

Prints a markdown table: one row per recipe with iterations, batch, lr, wall time and the EMA
weights' accuracy on the 10k real test images. The "judge" recipe trains on all 60k real training
images (the real-data reference classifier); "fast10k" is the cheap recipe for ~10k images.

    PYTHONPATH=src python benchmarks/learner_recipe.py [--recipes judge fast10k] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from deliberate.learner import evaluate
from deliberate.training import TrainConfig, train_classifier

# Chosen from a sweep on a 2-core VM shared with a training job (1 torch thread): judge 1500 steps
# gave 91.6 % (lr 2e-3 or 4e-3); fast10k with 1200 steps gained only 0.6 points; crop/flip
# augmentation cost 2 points at 600 steps.
RECIPES = {
    "judge": (60_000, TrainConfig(iterations=2000, batch_size=128, lr=4e-3, eval_every=500)),
    "fast10k": (10_000, TrainConfig(iterations=600, batch_size=128, lr=4e-3, eval_every=200)),
}


def load_idx(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Read `<prefix>-images-idx3-ubyte.gz` (N, 28, 28) uint8 and its labels (N,) int64."""
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    assert len(images) == len(labels), "image and label files disagree"
    return images, labels


def parse_overrides(pairs: list[str]) -> dict:
    """Turn ["lr=0.003", "augment=true", "betas=0.9,0.95"] into typed TrainConfig overrides."""
    defaults, out = TrainConfig(), {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        default = getattr(defaults, key)
        if isinstance(default, bool):  # before int: bool is a subclass of int
            out[key] = value.lower() in ("1", "true")
        elif isinstance(default, tuple):
            out[key] = tuple(float(v) for v in value.split(","))
        else:
            out[key] = type(default)(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 on a busy box)"
    )
    parser.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides, key=value")
    parser.add_argument("--n-train", type=int, default=None, help="override the training-set size")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_x, train_y = load_idx(args.data, "train")
    test_x, test_y = load_idx(args.data, "t10k")

    rows = []
    for name in args.recipes:
        n_train, cfg = RECIPES[name]
        cfg = dataclasses.replace(cfg, **parse_overrides(args.set))
        n_train = args.n_train or n_train
        # A fixed random subset, so the 10k recipe is not biased by the file's ordering.
        idx = np.random.default_rng(0).permutation(len(train_x))[:n_train]
        load0 = os.getloadavg()[0]
        start = time.perf_counter()
        learner, history = train_classifier(
            train_x[idx], train_y[idx], cfg, {"test": (test_x, test_y)}, progress=args.progress
        )
        wall = time.perf_counter() - start
        eval_start = time.perf_counter()
        evaluate(learner, test_x, test_y)
        eval_s = time.perf_counter() - eval_start
        train_s = wall - len(history) * eval_s  # the loop evaluated once per history row
        curve = " ".join(f"{r['step']}:{100 * r['acc_test']:.1f}" for r in history)
        rows.append(
            f"| {name} | {n_train} | {cfg.iterations} | {cfg.batch_size} | {cfg.lr:g} |"
            f" {cfg.augment} | {train_s:.0f} | {1000 * train_s / cfg.iterations:.0f} |"
            f" {eval_s:.1f} | {100 * history[-1]['acc_test']:.2f} | {curve} | {load0:.1f} |"
        )
        print(rows[-1], flush=True)

    print(
        f"\n{platform.node()} {os.cpu_count()} CPUs, torch {torch.__version__},"
        f" {args.threads} thread(s); overrides {args.set or 'none'}"
    )
    print(
        "| recipe | n_train | iters | batch | lr | augment | train s | ms/step | eval s / 10k |"
        " test acc % | acc curve (step:%) | load avg at start |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
