"""Scale by simulation: a pool of a million small images through the real Pool API, measured.

Builds pools of synthetic 28x28 grey uint8 images in a temp folder with `Pool.create` and
`Pool.append` (a DP round's rows: label, seed, round, omega, entropy), then measures, each in a
fresh subprocess:

* **open**: `Pool(dir)` seconds and resident memory: VmHWM / VmRSS / RssAnon from
  /proc/self/status, minus a baseline child with the same imports and no pool;
* **minibatches** of 256 images/s through the loop's own samplers: the inline
  `training.pool_sampler` (uniform, and with the newest round 2x as Table 3's "non-uni.") and
  `loader.LoaderSampler` (`learner.loader: workers`) with 0 / 1 / 2 workers; the file
  descriptors and the RSS the reads leave behind (memory-mapped shards are file-backed pages:
  RssFile, which the kernel may drop; RssAnon is what the process itself holds);
* **round append** at two pool sizes (rows / 10 and rows): one round of `--round` images as one
  `Pool.append` shard, and as torchrun writes it (`Pool.stage` + `Pool.commit` per generator
  batch of `--gen-batch`, as `generate.generate_into_pool` does on rank 0), then the join of the
  label and round columns the next sampler needs.

Two pools are measured: `--rows` images in shards of `--shard` (large shards: quick to build),
and `--small-rows` images in shards of `--gen-batch` (32 in the ImageNet DP presets, where a
shard is a generator batch) to show what shard count, not image count, costs.

    python benchmarks/scale_sim.py                     # 1M images: ~17 minutes here
    python benchmarks/scale_sim.py --quick             # seconds; tests/test_scale_sim.py runs it
Prints markdown tables (medians over --repeats) and one JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deliberate.data.pool import Pool

SHAPE = (28, 28)


def records(first: int, n: int, rnd: int, rng: np.random.Generator) -> list[dict]:
    """One batch's caller records, shaped like a guided DP round's."""
    labels, h = rng.integers(0, 10, n), rng.random(n)
    return [{"label": int(labels[i]), "seed": first + i, "round": rnd, "omega": 0.05,
             "entropy": float(h[i])} for i in range(n)]  # fmt: skip


def build(root: Path, rows: int, shard: int, round_size: int) -> float:
    """A pool of `rows` synthetic images in shards of `shard` (round k: images k*round_size...);
    the seconds it took."""
    t0 = time.perf_counter()
    pool = Pool.create(root, {"image_shape": list(SHAPE), "num_classes": 10})
    rng = np.random.default_rng(0)
    for first in range(0, rows, shard):
        n = min(shard, rows - first)
        images = rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8)
        pool.append(images, records(first, n, first // round_size, rng))
    return time.perf_counter() - t0


CHILD = r"""
import json, os, statistics, sys, time
def status():
    lines = open("/proc/self/status").read().splitlines()
    kv = dict(line.split(":", 1) for line in lines if ":" in line)
    return {k: int(kv[k].split()[0]) / 1024 for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}
def fds():
    return len(os.listdir("/proc/self/fd"))
what, args = sys.argv[1], json.loads(sys.argv[2])
import numpy as np
from deliberate.data.pool import Pool
if args.get("torch"):
    import torch
    from deliberate.loader import LoaderSampler
    from deliberate.training import pool_sampler
out = {}
if what == "baseline":
    out = status()
elif what == "open":
    t0 = time.perf_counter(); pool = Pool(args["root"]); out["open_s"] = time.perf_counter() - t0
    out.update(status())
elif what == "read":
    from deliberate.data import shards
    torch.set_num_threads(1)
    default_maps = shards.MAX_MAPS
    out = {}
    for root in args["roots"]:
        pool = Pool(root); labels, rounds = pool.labels(), pool.column("round")
        before, b, runs = fds(), args["batch"], []
        for name, workers, weight, maps in args["configs"]:
            shards.MAX_MAPS = maps or default_maps  # as a lower `ulimit -n` would set it
            view = pool.images_view()  # a fresh view: nothing mapped yet
            n_batches = args["batches"] * (args["repeats"] + 1)
            if workers is None:
                sampler = pool_sampler(view, labels, rounds, weight)
            else:
                sampler = LoaderSampler(view, labels, rounds, weight, seed=0, batch_size=b,
                                        part=slice(None), start=0, stop=n_batches,
                                        workers=workers)
            g = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            for _ in range(args["batches"]):  # warm-up: workers start, shards get mapped
                x, y = sampler(g, b, slice(None))
                assert x.shape == (b, 28, 28) and x.dtype == torch.uint8 and len(y) == b
            first = time.perf_counter() - t0
            rates = []
            for _ in range(args["repeats"]):
                t0 = time.perf_counter()
                for _ in range(args["batches"]):
                    sampler(g, b, slice(None))
                rates.append(args["batches"] * b / (time.perf_counter() - t0))
            runs.append({"name": name, "img_s": statistics.median(rates), "rates": rates,
                         "warmup_s": first, "fds": fds() - before, **status()})
            del sampler, view
        out[root] = runs
    import resource
    out["max_maps"], out["nofile"] = default_maps, resource.getrlimit(resource.RLIMIT_NOFILE)[0]
elif what == "append":
    pool = Pool(args["root"]); pool.labels(); pool.column("round")  # as a live run holds them
    out = {"size": len(pool), "append_s": [], "staged_s": [], "join_s": []}
    n, gb, rng = args["round"], args["gen_batch"], np.random.default_rng(1)
    for rep in range(args["repeats"]):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        rec = [{"label": i % 10, "seed": -1 - i, "round": 90 + rep, "omega": 0.05,
                "entropy": 0.5} for i in range(n)]
        t0 = time.perf_counter(); pool.append(images, rec)
        out["append_s"].append(time.perf_counter() - t0)
        t0 = time.perf_counter(); pool.labels(); pool.column("round")
        out["join_s"].append(time.perf_counter() - t0)
        t0, first, shard = time.perf_counter(), len(pool), len(pool.shards)
        for j, s in enumerate(range(0, n, gb)):  # rank 0 of generate_into_pool, world of one
            pool.stage(images[s : s + gb], rec[s : s + gb], shard=shard + j, first=first + s)
            pool.commit()
        out["staged_s"].append(time.perf_counter() - t0)
    out["after"] = len(pool)
print(json.dumps(out))
"""


def child(what: str, **args) -> dict:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CHILD, what, json.dumps(args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"child {what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


READS = [  # (name, DataLoader workers or None for inline, new_data_weight, shards mapped at once)
    ("inline `pool_sampler`, uniform", None, 1.0, None),
    ("inline `pool_sampler`, newest round 2x", None, 2.0, None),
    ("`loader: workers`, 0 workers", 0, 1.0, None),
    ("`loader: workers`, 1 worker", 1, 1.0, None),
    ("`loader: workers`, 2 workers", 2, 1.0, None),
    ("inline, 256 shards mapped (as at `ulimit -n 1024`)", None, 1.0, 256),
    ("`loader: workers`, 2 workers, 256 shards mapped", 2, 1.0, 256),
]


def run(args) -> dict:
    res: dict = {"args": vars(args)}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        pools = {"big": (Path(tmp) / "big", args.rows, args.shard),
                 "small": (Path(tmp) / "small", args.small_rows, args.gen_batch),
                 "tenth": (Path(tmp) / "tenth", args.rows // 10, args.shard)}  # fmt: skip
        for key, (root, rows, shard) in pools.items():
            res[f"build_{key}_s"] = build(root, rows, shard, args.round)
            res[f"disk_{key}_mb"] = sum(p.stat().st_size for p in root.rglob("*")) / 2**20
        base = child("baseline")
        res["baseline"], res["baseline_torch"] = base, child("baseline", torch=True)
        for key in ("big", "small"):
            opens = [child("open", root=str(pools[key][0])) for _ in range(args.repeats)]
            res[f"open_{key}"] = {k: statistics.median(o[k] for o in opens) for k in opens[0]}
        roots = [str(pools[key][0]) for key in ("big", "small")]
        reads = child("read", torch=True, roots=roots, batch=args.batch, batches=args.batches,
                      repeats=args.repeats, configs=READS)  # one torch import for both pools
        res["read_big"], res["read_small"] = reads[roots[0]], reads[roots[1]]
        res["max_maps"], res["nofile"] = reads["max_maps"], reads["nofile"]
        for key in ("tenth", "big"):
            res[f"append_{key}"] = child("append", root=str(pools[key][0]), round=args.round,
                                         gen_batch=args.gen_batch, repeats=args.repeats)  # fmt: skip
    return res


def tables(res: dict) -> str:
    a, med = res["args"], statistics.median
    base, tbase = res["baseline"], res["baseline_torch"]
    out = [f"baseline RSS (python + numpy + deliberate.data.pool): {base['VmHWM']:.0f} MB; with "
           f"torch and the samplers: {tbase['VmHWM']:.0f} MB", "",
           "| pool | images | shards | disk MiB | build s | open s | VmHWM MB (above baseline) "
           "| RssAnon MB (above baseline) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, rows, shard in (("big", a["rows"], a["shard"]), ("small", a["small_rows"], a["gen_batch"])):
        o = res[f"open_{key}"]
        out.append(f"| {shard:,} per shard | {rows:,} | {-(-rows // shard):,} | "
                   f"{res[f'disk_{key}_mb']:,.0f} | {res[f'build_{key}_s']:.1f} | {o['open_s']:.2f} | "
                   f"{o['VmHWM']:.0f} ({o['VmHWM'] - base['VmHWM']:.0f}) | "
                   f"{o['RssAnon']:.0f} ({o['RssAnon'] - base['RssAnon']:.0f}) |")  # fmt: skip
    out += ["", f"Minibatches of {a['batch']}, median of {a['repeats']} x {a['batches']} batches "
            f"after a warm-up of as many (warm page cache; a view keeps {res['max_maps']:,} shards "
            f"mapped at most, ulimit -n {res['nofile']:,}):", "",
            "| sampler | pool | images/s | warm-up s | fds held by the process | RssAnon MB "
            "(above torch baseline) | RssFile MB |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, shard in (("big", a["shard"]), ("small", a["gen_batch"])):
        for r in res[f"read_{key}"]:
            out.append(f"| {r['name']} | {shard:,} per shard | {r['img_s']:,.0f} | "
                       f"{r['warmup_s']:.2f} | {r['fds']:,} | {r['RssAnon']:.0f} "
                       f"({r['RssAnon'] - tbase['RssAnon']:.0f}) | "
                       f"{r['RssFile']:.0f} |")  # fmt: skip
    out += ["", f"Appending one round of {a['round']:,} images (median of {a['repeats']}):", "",
            "| pool size before | one `append` shard s | staged + committed in shards of "
            f"{a['gen_batch']} s | label + round re-join s |", "|---|---|---|---|"]  # fmt: skip
    for key in ("tenth", "big"):
        p = res[f"append_{key}"]
        out.append(f"| {p['size']:,} | {med(p['append_s']):.2f} | {med(p['staged_s']):.2f} | "
                   f"{med(p['join_s']):.3f} |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="images in the large-shard pool")
    ap.add_argument("--shard", type=int, default=50_000, help="images per shard of that pool")
    ap.add_argument("--small-rows", type=int, default=200_000,
                    help="images in the pool of --gen-batch shards")  # fmt: skip
    ap.add_argument("--gen-batch", type=int, default=32, help="generator batch = shard (presets)")
    ap.add_argument("--round", type=int, default=32_000, help="images per appended round")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=100, help="batches per timed repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", help="build under this folder (default: the system temp folder)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.shard, args.small_rows, args.round = 10_000, 2_500, 960, 1_000
        args.batches, args.repeats = 4, 1
    res = run(args)
    print(tables(res))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
