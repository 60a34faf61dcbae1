"""Peak RAM of an oversampled round's choice: candidates in RAM (before) vs on disk (now).

Usage: python benchmarks/candidates_ram.py [--per-round 1000] [--ratios 2 4 8] [--size 64]

Each (method, R) runs in a fresh child process: R x P candidates are sampled by a stand-in
sampler (random RGB images of --size px and random scores, batch 100, no diffusion model, so
only the choice's own memory is measured), P are kept per the highest entropy, and written to a
pool. "in RAM" is the choice this replaced (rounds.select_candidates at commit 575d46d, held
every candidate as uint8 until the choice); "on disk" is deliberate.candidates.choose, the
loop's code. The child's peak RSS is reset (/proc/self/clear_refs) after imports and set-up, so
the column is what the round added on top. Each is measured twice: with glibc's default
malloc, whose adaptive mmap threshold keeps freed per-batch temporaries in a heap pinned by the
retained candidates (what a run sees), and with MALLOC_MMAP_THRESHOLD_=131072, which returns
every large block at once (so the peak is what the choice holds). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 100


def _status(key: str) -> float:
    """A /proc/self/status field in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


class FakeBackend:
    """What the choice and the pool need of a generator: classes, image shape, an id."""

    def __init__(self, size: int):
        self.class_names = tuple(f"c{k}" for k in range(10))
        self.num_classes = 10
        self.image_shape = (3, size, size)
        self.identifier = "fake"


def child(method: str, ratio: float, per_round: int, size: int) -> dict:
    import numpy as np
    import torch

    from deliberate import candidates
    from deliberate.config import from_dict
    from deliberate.data.pool import Pool
    from deliberate.generate import generate_into_pool
    from deliberate.generators import pool_meta
    from deliberate.generators.base import to_uint8
    from deliberate.learner import to_float01
    from deliberate.practice import PracticeConfig
    from deliberate.rounds import round_plan
    from deliberate.sampling import SampleOutput
    from deliberate.selection import select_top_entropy

    torch.set_num_threads(1)
    cfg = from_dict(PracticeConfig, {"generator": {"batch_size": BATCH}})
    backend, m = FakeBackend(size), round(ratio * per_round)
    plan = round_plan(10, m, 0, 1)
    extra = {"round": 1, "omega": 0.0, "fingerprint": "fake", "oversample": ratio}

    def sample_fn(labels, seeds):  # random images and scores, a function of the seeds
        g = torch.Generator().manual_seed(seeds[0])
        out = SampleOutput(torch.rand(len(seeds), 3, size, size, generator=g))
        out.extras = {"entropy": torch.rand(len(seeds), generator=g),
                      "learner_pred": torch.randint(0, 10, (len(seeds),), generator=g),
                      "guidance_skipped": torch.zeros(len(seeds))}  # fmt: skip
        return out

    def in_ram(candidates_, n):  # the replaced implementation, as it was
        images, scores, labels = [], [], []
        for i in range(0, len(candidates_), BATCH):
            chunk = candidates_[i : i + BATCH]
            out = sample_fn(torch.tensor([y for y, _ in chunk]), [s for _, s in chunk])
            images.append(to_uint8(out.images.cpu()))
            scores.append(out.extras)
            labels += [y for y, _ in chunk]
        images = torch.cat(images)
        extras = {key: torch.cat([e[key] for e in scores]) for key in scores[0]}
        chosen = select_top_entropy(extras["entropy"].numpy(), np.array(labels), n, 10)
        kept = {candidates_[i][1]: (images[i], {k: v[i] for k, v in extras.items()})
                for i in chosen}  # fmt: skip

        def replay(labels, seeds):
            rows = [kept[s] for s in seeds]
            out = SampleOutput(to_float01(torch.stack([im for im, _ in rows])))
            out.extras = {key: torch.stack([e[key] for _, e in rows]) for key in extras}
            return out

        return [candidates_[i] for i in chosen], replay

    with tempfile.TemporaryDirectory(dir=".") as tmp:
        pool = Pool.create(Path(tmp) / "pool", pool_meta(backend))
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := RSS now
        base, t0 = _status("VmHWM"), time.perf_counter()
        if method == "in RAM":
            kept, replay = in_ram(plan, per_round)
        else:
            kept, replay = candidates.choose(cfg, backend, tmp, 1, plan, per_round, sample_fn,
                                             extra, progress=False)  # fmt: skip
        generate_into_pool(backend, pool, kept, cfg.generator.sampler, batch_size=BATCH,
                           extra=extra, sample_fn=replay, progress=False)  # fmt: skip
        seconds = time.perf_counter() - t0
        peak = _status("VmHWM")
        assert len(pool) == per_round
    return {"added_mib": peak - base, "seconds": seconds, "candidates_mib": m * 3 * size**2 / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-round", type=int, default=1000, help="P: images kept")
    ap.add_argument("--ratios", type=float, nargs="+", default=[2, 4, 8], help="R values")
    ap.add_argument("--size", type=int, default=64, help="image side (RGB)")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "R"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        out = child(args.child[0], float(args.child[1]), args.per_round, args.size)
        print(json.dumps(out))
        return
    print(f"P = {args.per_round}, {args.size}x{args.size} RGB (uint8: {3 * args.size**2 / 1024:.0f} "
          f"KiB each), batches of {BATCH}\n")  # fmt: skip
    print("| R | candidates (uint8) | in RAM: peak added | on disk: peak added | "
          "in RAM, fixed threshold | on disk, fixed threshold | in RAM s | on disk s |")
    print("|---|---|---|---|---|---|---|---|")
    fixed = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    for r in args.ratios:
        got = {}
        for method in ("in RAM", "on disk"):
            for env in (None, fixed):
                cmd = [sys.executable, __file__, "--child", method, str(r),
                       "--per-round", str(args.per_round), "--size", str(args.size)]  # fmt: skip
                done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                got[method, env is None] = json.loads(done.stdout)
        a, b = got["in RAM", True], got["on disk", True]
        af, bf = got["in RAM", False], got["on disk", False]
        print(f"| {r:g} | {a['candidates_mib']:.0f} MiB | {a['added_mib']:.0f} MiB | "
              f"{b['added_mib']:.0f} MiB | {af['added_mib']:.0f} MiB | {bf['added_mib']:.0f} MiB | "
              f"{a['seconds']:.1f} | {b['seconds']:.1f} |")


if __name__ == "__main__":
    main()
