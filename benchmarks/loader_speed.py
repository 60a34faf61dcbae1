"""The learner's input path (issue 16, item 4): images/s per DataLoader worker against a step.

Usage: python benchmarks/loader_speed.py [--images 1024] [--batch 64] [--steps 40]
                                         [--workers 0 1 2] [--vit-batch 4] [--vit-steps 3]

A pool of 256² RGB photo crops (benchmarks/pool_codecs.py's) is written as JPEG q90 (the
ImageNet presets' codec) and as raw. `loader.LoaderSampler`, the `learner.loader: workers`
path, then hands out `--steps` global batches of `--batch` images, each step's ids drawn from
(seed, step) as in training, read and decoded by W worker processes (W = 0: in the training
process). Images/s is wall time after two warm-up batches; "per worker" divides by W. The
other side is a learner step on the same machine: ViT-B/16 at 224 (the IN presets' learner,
fp32 on CPU) with the RandomResizedCrop + flip of `learner.crop: resized`, forward, backward
and AdamW, and the shipped small CNN at 28². The input path keeps up when its images/s is
above the step's; on a GPU, `benchmarks/gpu_check.py` gives ViT-B/16's images/s to set
against the per-worker rate here.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deliberate.data.codecs import PoolSettings
from deliberate.data.pool import Pool
from deliberate.loader import LoaderSampler

SHARD = 250


def build_pool(root: Path, images: np.ndarray, codec: str, quality: int) -> Pool:
    settings = PoolSettings(codec, quality)
    pool = Pool.create(root, {"image_shape": list(images.shape[1:]), "num_classes": 100,
                              **settings.meta()})  # fmt: skip
    for i in range(0, len(images), SHARD):
        ids = range(i, min(i + SHARD, len(images)))
        pool.append(images[i : i + SHARD], [{"label": j % 100, "seed": j} for j in ids])
    return Pool(root)


def input_rate(pool: Pool, workers: int, batch: int, steps: int) -> float:
    """Images/s of the DataLoader path with `workers` processes (wall clock, after warm-up)."""
    sampler = LoaderSampler(pool.images_view(), pool.labels(), pool.column("round"), 1.0,
                            seed=0, batch_size=batch, part=slice(None), start=0,
                            stop=steps + 2, workers=workers)  # fmt: skip
    for _ in range(2):  # workers started, first batches prefetched
        sampler(None, batch, slice(None))
    t0 = time.perf_counter()
    for _ in range(steps):
        images, _labels = sampler(None, batch, slice(None))
    seconds = time.perf_counter() - t0
    assert images.shape == (batch, *pool.meta["image_shape"])
    return steps * batch / seconds


def learner_rate(arch: str, size: int, batch: int, steps: int) -> float:
    """Images/s of one training step: crop + flip (RGB 256²: resized), forward, backward, AdamW."""
    from deliberate.augment import random_resized_crop_flip
    from deliberate.learner import build_learner

    channels = 1 if arch == "small_resnet" else 3
    learner = build_learner(arch, 100 if channels == 3 else 10, channels, size,
                            input_size=224 if arch == "vit_b_16" else None).train()  # fmt: skip
    opt = torch.optim.AdamW(learner.parameters(), lr=1e-4)
    x8 = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8)
    y = torch.randint(0, learner.num_classes, (batch,))

    def step():
        x = x8.float() / 255
        if channels == 3:
            x = random_resized_crop_flip(x)
        loss = torch.nn.functional.cross_entropy(learner(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1024, help="256² images in each pool")
    ap.add_argument("--batch", type=int, default=64, help="images per global batch")
    ap.add_argument("--steps", type=int, default=40, help="timed batches per cell")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--vit-batch", type=int, default=4)
    ap.add_argument("--vit-steps", type=int, default=3, help="0: skip the ViT-B/16 step")
    args = ap.parse_args()
    torch.set_num_threads(1)  # each process one core: the workers take the others
    sys.path.insert(0, str(Path(__file__).parent))
    from pool_codecs import photo_crops

    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"1 torch thread per process; {args.images} images, batch {args.batch}, "
          f"{args.steps} timed batches per cell")  # fmt: skip
    images = photo_crops(args.images)
    print("\n| pool | workers | input img/s | per worker |\n|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as d:
        for codec, quality in (("jpeg", 90), ("raw", 90)):
            pool = build_pool(Path(d) / codec, images, codec, quality)
            label = f"{codec} q{quality}" if codec == "jpeg" else codec
            for w in args.workers:
                rate = input_rate(pool, w, args.batch, args.steps)
                per = f"{rate / w:,.0f}" if w else "—"
                print(f"| {label} 256² RGB | {w} | {rate:,.0f} | {per} |", flush=True)
    print("\n| learner step (same machine, 1 thread, fp32) | batch | img/s |\n|---|---:|---:|")
    print(f"| small_resnet, 28² grey | {args.batch} | "
          f"{learner_rate('small_resnet', 28, args.batch, 10):,.0f} |", flush=True)
    if args.vit_steps:
        rate = learner_rate("vit_b_16", 256, args.vit_batch, args.vit_steps)
        print(f"| vit_b_16, 256² RGB cropped to 224² | {args.vit_batch} | {rate:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
