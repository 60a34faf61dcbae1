"""DP on a real dataset that is not Fashion-MNIST: scikit-learn's handwritten digits (10 classes).

The user's path of docs/your-data.md, on real data a package installable here ships:

1. the 1,797 8x8 digits written as an ImageFolder: train 1,000 / val 300 / test 497,
   stratified by class with a fixed seed;
2. `deliberate train-generator imagefolder/generator` on train/ (16 px grey);
3. a judge (the learner's architecture) trained on the real train/ images: the generator's
   class fidelity is the judge's accuracy on the static pool's plainly sampled images;
4. `deliberate run imagefolder/dp` and `imagefolder/static` at the same image and iteration
   budget, one pair per seed.

    python benchmarks/your_data.py --out runs/digits [--seeds 0 1 2] [--threads 1]

Prints a markdown table (for BENCHMARKS.md). Needs scikit-learn: pip install -e ".[bench]".
Everything resumes: re-running skips what is done.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from deliberate.cli import main

SPLITS = {"train": 1000, "val": 300}  # the rest (497) is test
GENERATOR = ["model.image_size=16", "model.image_channels=1", "train.steps=3000",
             "train.sample_every=2000", "train.checkpoint_every=1000"]  # fmt: skip
BUDGET = ["learner.iterations=1000", "practice.max_images=1000", "practice.eval_every=25",
          "practice.test_every=0"]  # fmt: skip
METHODS = {"static": ["practice.initial=1000"],
           "dp": ["practice.initial=400", "practice.per_round=200"]}  # fmt: skip


def write_digits(root: Path) -> Path:
    """The digits as ROOT/{train,val,test}/<digit>/<index>.png (8x8, 16 grey levels -> 0..255)."""
    if (root / "done").exists():
        return root
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    rng = np.random.default_rng(0)
    split_of = np.empty(len(images), dtype=object)
    for k in range(10):  # stratified: each class split in the same proportions
        idx = rng.permutation(np.flatnonzero(digits.target == k))
        n_train = round(len(idx) * SPLITS["train"] / len(images))
        n_val = round(len(idx) * SPLITS["val"] / len(images))
        split_of[idx[:n_train]] = "train"
        split_of[idx[n_train : n_train + n_val]] = "val"
        split_of[idx[n_train + n_val :]] = "test"
    for i, (image, label) in enumerate(zip(images, digits.target, strict=True)):
        folder = root / split_of[i] / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    (root / "done").write_text("")
    return root


def judge_fidelity(data: Path, pool_dir: Path, threads: int) -> tuple[float, float]:
    """(judge's real test accuracy, its accuracy on the pool's images = class fidelity)."""
    import torch

    from deliberate.data.imagefolder import decode_images, list_images
    from deliberate.data.pool import Pool
    from deliberate.learner import evaluate
    from deliberate.training import TrainConfig, train_classifier

    torch.set_num_threads(threads)
    ids = tuple(str(k) for k in range(10))
    files, labels = list_images(data / "train", ids, where="the digits folder")
    test_files, test_labels = list_images(data / "test", ids, where="the digits folder")
    cfg = TrainConfig(iterations=1500, batch_size=64, lr=2e-3, eval_every=1500)
    judge, _ = train_classifier(decode_images(files, 16, 1), labels, cfg, None, progress=False)
    pool = Pool(pool_dir)
    images, pool_labels = pool.get(list(range(len(pool))))
    real = evaluate(judge, decode_images(test_files, 16, 1), test_labels)
    return real, evaluate(judge, images, pool_labels)


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/digits")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    out = Path(args.out)
    data = write_digits(out / "data")
    root = f"--set=data.imagefolder.root={data}"
    t0 = time.perf_counter()
    gen = out / "gen" / "generator"
    if not gen.exists():
        sets = [root, f"--set=train.threads={args.threads}", *(f"--set={s}" for s in GENERATOR)]
        assert main(["train-generator", "imagefolder/generator", "--out", str(out / "gen"),
                     "--quiet", *sets]) == 0  # fmt: skip
    gen_seconds = time.perf_counter() - t0
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    for seed in args.seeds:
        for method, sizes in METHODS.items():
            run = out / f"{method}-s{seed}"
            sets = [root, f"--set=generator.path={gen}", f"--set=seed={seed}",
                    f"--set=threads={args.threads}", *(f"--set={s}" for s in BUDGET + sizes)]  # fmt: skip
            assert main(["run", f"imagefolder/{method}", "--out", str(run), "--quiet", *sets]) == 0
            results[method].append(json.loads((run / "summary.json").read_text()))
    real, fidelity = judge_fidelity(data, out / f"static-s{args.seeds[0]}" / "pool", args.threads)

    def cell(method: str, key: str) -> str:
        xs = [100 * r[key] for r in results[method]]
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{statistics.mean(xs):.2f} ± {sd:.2f}"

    print(f"scikit-learn digits, 16 px grey; {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s); generator trained in {gen_seconds:.0f} s (0 if reused)")  # fmt: skip
    print(f"judge (real train/, {len(results['dp'])} seeds below): real test {100 * real:.2f} %, "
          f"generator class fidelity {100 * fidelity:.2f} %\n")  # fmt: skip
    print("| method | images | iterations | real val % | real test % | per seed (test %) |")
    print("|---|---|---|---|---|---|")
    for method in METHODS:
        seeds = " / ".join(f"{100 * r['test_acc']:.2f}" for r in results[method])
        print(f"| {method} | 1,000 | 1,000 | {cell(method, 'val_acc')} | "
              f"{cell(method, 'test_acc')} | {seeds} |")  # fmt: skip
    gains = [100 * (d["test_acc"] - s["test_acc"]) for d, s in zip(results["dp"], results["static"],
                                                                     strict=True)]  # fmt: skip
    print(f"\nDP - static (test, points, per seed): {', '.join(f'{g:+.2f}' for g in gains)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
