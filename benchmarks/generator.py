"""Benchmark the embedded generator against the foundation bars; prints tables, writes JSON.

  speed        plain sampling images/s at the default settings (median of --repeats runs)
  load         shipped checkpoint size and load time (fresh process, and in-process)
  judge        a CNN trained on the 60k real training images, accuracy on the real 10k test set
  fidelity     share of 1,000-per-class generated images the judge assigns to the intended class
  usefulness   a classifier trained only on those generated images, accuracy on the 9,000 real
               test images (the fixed split; the 1,000 validation images are not used)

Usage: python benchmarks/generator.py [--sweep] [--out runs/bench]
`--sweep` also measures fidelity and speed for a grid of (steps, cfg) on fewer images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from deliberate.data.fashion_mnist import load_fashion_mnist, split_test
from deliberate.generators.base import to_uint8
from deliberate.generators.pixel import DEFAULT_GENERATOR, load_pixel_backend
from deliberate.learner import build_learner, evaluate
from deliberate.rounds import plan
from deliberate.sampling import SamplerSettings, sample
from deliberate.training import train_classifier
from learner_recipe import RECIPES
from sampling_speed import rate

DEFAULTS = {"steps": 10, "cfg": 0.5}


def generate(backend, per_class, steps, cfg, batch_size=500, seed=0):
    """uint8 images and labels, 1..per_class of each class, plus wall seconds."""
    pairs = plan(range(backend.num_classes), per_class, seed)
    out, t0 = [], time.perf_counter()
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        labels = torch.tensor([y for y, _ in chunk])
        out.append(to_uint8(sample(backend, labels, [s for _, s in chunk], SamplerSettings(steps=steps, cfg=cfg)).images))
    seconds = time.perf_counter() - t0
    return torch.cat(out).numpy(), np.array([y for y, _ in pairs]), seconds


def load_times(repeats=3):
    code = ("import time; t=time.perf_counter(); from deliberate.generators.pixel import load_pixel_backend;"
            "b=load_pixel_backend(); print(time.perf_counter()-t, b.load_seconds)")
    rows = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rows.append([float(x) for x in out.stdout.split()])
    size = sum(f.stat().st_size for f in DEFAULT_GENERATOR.rglob("*") if f.is_file())
    return {"size_mb": size / 2**20, "fresh_process_s": statistics.median(r[0] for r in rows),
            "load_only_s": statistics.median(r[1] for r in rows)}


# The recipes measured in benchmarks/learner_recipe.py: the judge reaches 92.3 % on real test
# images; for the generated 10k we take the fast10k recipe with its longer (1200-step) schedule.
JUDGE = RECIPES["judge"][1]
LEARNER = dataclasses.replace(RECIPES["fast10k"][1], iterations=1200, eval_every=600)


def get_judge(data, cache: Path):
    """The real-data judge (cached in the output folder: it takes minutes to train)."""
    judge = build_learner("small_resnet", 10, 1, 28)
    if cache.exists():
        judge.load_state_dict(load_file(cache))
    else:
        judge, _ = train_classifier(data.train_images, data.train_labels, JUDGE, None, progress=True)
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, cache)
    return judge.eval()


def per_class_acc(model, images, labels):
    with torch.no_grad():
        from deliberate.learner import to_float01

        preds = torch.cat([model(to_float01(images[i : i + 1000])).argmax(1) for i in range(0, len(images), 1000)])
    hits = (preds.numpy() == labels)
    return float(hits.mean()), [float(hits[labels == c].mean()) for c in range(10)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 250, 500])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--skip-usefulness", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
               "date": time.strftime("%Y-%m-%d"), "defaults": DEFAULTS}

    backend = load_pixel_backend()
    results["generator"] = backend.identifier
    results["load"] = load_times()
    print(f"checkpoint: {results['load']['size_mb']:.2f} MB, load {results['load']['load_only_s']:.2f} s "
          f"(fresh process incl. imports {results['load']['fresh_process_s']:.2f} s)")

    print("\n| batch | median img/s | runs |\n|---|---|---|")
    results["speed"] = {}
    for bs in args.batch_sizes:
        med, rates = rate(backend, DEFAULTS["steps"], DEFAULTS["cfg"], bs, repeats=args.repeats)
        results["speed"][bs] = {"median": med, "runs": rates}
        print(f"| {bs} | {med:.1f} | {' '.join(f'{r:.0f}' for r in rates)} |")

    data = load_fashion_mnist()
    split = split_test(data.test_images, data.test_labels)
    judge = get_judge(data, out / "judge.safetensors")
    judge_acc = evaluate(judge, data.test_images, data.test_labels)
    results["judge_real_test_acc"] = judge_acc
    print(f"\njudge (trained on 60k real): real test accuracy {judge_acc:.4f}")

    if args.sweep:
        print("\n| steps | cfg λ | fidelity (200/class) | img/s (batch 250) |\n|---|---|---|---|")
        results["sweep"] = []
        for steps in (5, 10, 20):
            for cfg in (0.0, 0.5, 1.0, 2.0, 3.0):
                imgs, labels, _ = generate(backend, 200, steps, cfg, seed=7)
                fid, _ = per_class_acc(judge, imgs, labels)
                img_s, _ = rate(backend, steps, cfg, 250, repeats=2)
                results["sweep"].append({"steps": steps, "cfg": cfg, "fidelity": fid, "img_s": img_s})
                print(f"| {steps} | {cfg} | {fid:.4f} | {img_s:.1f} |", flush=True)

    imgs, labels, secs = generate(backend, args.per_class, **DEFAULTS)
    fid, per_class = per_class_acc(judge, imgs, labels)
    results["fidelity"] = {"images": len(labels), "accuracy": fid, "per_class": per_class,
                           "generation_img_s": len(labels) / secs}
    print(f"\nfidelity: judge agrees with the intended class on {fid:.4f} of {len(labels)} images "
          f"(generated at {len(labels) / secs:.1f} img/s)")
    print("per class: " + " ".join(f"{a:.2f}" for a in per_class))

    if not args.skip_usefulness:
        learner, history = train_classifier(imgs, labels, LEARNER, None, progress=True)
        acc = evaluate(learner, split.test_images, split.test_labels)
        results["usefulness_real_test9k_acc"] = acc
        print(f"usefulness: trained on {len(labels)} generated images only -> "
              f"real test (9,000) accuracy {acc:.4f}")
    (out / "generator.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out / 'generator.json'}")


if __name__ == "__main__":
    main()
