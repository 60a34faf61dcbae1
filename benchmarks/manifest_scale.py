"""A pool of millions of rows, simulated: open time, resident memory, columns, one more shard.

Builds a pool in the on-disk format (tiny 1x1 images, rows like a DP run's: round, omega,
entropy, learner_pred, guidance_skipped, fingerprint, sampler settings) shard by shard with the
pool's own row, column and stamp functions, then measures each step in a fresh subprocess
(peak RSS: VmHWM of /proc/self/status, which starts afresh at exec; `getrusage`'s ru_maxrss
does not: it carries the parent's peak into the child, so it read 774 MB for an empty child of a
parent holding a 10M-row pool): `Pool(dir)` open, `round` + `label` columns, appending one
more shard; and the old way, every row as a dict (`records()`), as the loop read it each round.
`--old-src DIR` also opens the pool with an older checkout's `src` (which parsed every manifest
row on open). A baseline child (the same imports, no pool) gives the interpreter's own RSS, so the
table also shows what the pool itself holds. `records()` is skipped above `--records-max` rows
(2.5 GB at 1M rows: 10M would not fit in 24 GiB). `--keep DIR` builds the pool in DIR (or reuses
the one there) and leaves it, for re-measuring or profiling. Prints a table for BENCHMARKS.md.

    python benchmarks/manifest_scale.py --rows 2000000          # a few minutes here
    python benchmarks/manifest_scale.py --rows 10000000         # the issue's 10M target
    python benchmarks/manifest_scale.py --rows 2000000 --old-src /path/to/old/checkout/src
    python benchmarks/manifest_scale.py --rows 10000000 --keep /tmp/m10m   # build once, keep
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deliberate.data.columns import shard_columns, shard_stamp, write_columns
from deliberate.data.files import _dumps, atomic_file
from deliberate.data.pool import Pool
from deliberate.data.staging import _shard_name

SETTINGS = {"generator": "pixel:sim", "steps": 10, "cfg": 0.5, "eta": 0.0, "scheduler": "ddim"}


def rows_of(first: int, n: int, rng: np.random.Generator) -> list[dict]:
    """One shard's manifest rows, shaped like a guided DP round's."""
    name, rnd = _shard_name(first // n), first // 1_000_000
    labels, h = rng.integers(0, 10, n), rng.random(n)
    return [
        {"id": first + i, "label": int(labels[i]), "seed": 10_000_000 + first + i, "shard": name,
         "index": i, **SETTINGS, "round": rnd, "omega": 0.04, "fingerprint": f"{rnd:016x}",
         "entropy": float(h[i]), "learner_pred": float(labels[(i + 1) % n]),
         "guidance_skipped": 0.0}
        for i in range(n)
    ]  # fmt: skip


def build(root: Path, total: int, per_shard: int) -> None:
    """Write pool.json, every shard, its column file and the manifest, as `Pool.append` does."""
    meta = {"format": "deliberate-pool", "version": 1,
            "meta": {"image_shape": [1, 1], "num_classes": 10}}  # fmt: skip
    root.mkdir(parents=True)
    (root / "pool.json").write_text(json.dumps(meta))
    (root / "shards").mkdir()
    (root / "columns").mkdir()
    rng = np.random.default_rng(0)
    with open(root / "manifest.jsonl", "wb") as manifest:
        for first in range(0, total, per_shard):
            n = min(per_shard, total - first)
            rows, name = rows_of(first, n, rng), _shard_name(first // per_shard)
            payload = "".join(_dumps(r) + "\n" for r in rows).encode()
            with atomic_file(root / "shards" / name) as f:
                np.savez(f, images=np.zeros((n, 1, 1), np.uint8),
                         ids=np.arange(first, first + n, dtype=np.int64),
                         labels=np.array([r["label"] for r in rows], np.int64),
                         rows=np.frombuffer(_dumps(rows).encode(), np.uint8))  # fmt: skip
            with open(root / "shards" / name, "rb") as f:
                cols = shard_columns(rows, first, len(payload), shard_stamp(f))
            with atomic_file(root / "columns" / name) as f:
                write_columns(f, cols)
            manifest.write(payload)


CHILD = r"""
import json, resource, sys, time
def peak_mb():  # this process's own peak RSS (VmHWM); ru_maxrss where /proc is missing
    try:
        line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import numpy as np
root, what = sys.argv[1], sys.argv[2]
from deliberate.data.pool import Pool
if what == "baseline":  # the interpreter with these imports, no pool
    print(json.dumps({"peak_rss_mb": peak_mb()}))
    sys.exit()
t0 = time.perf_counter(); pool = Pool(root); out = {"open_s": time.perf_counter() - t0}
out["open_rss_mb"] = peak_mb()
t0 = time.perf_counter()
if what == "records":
    rows = pool.records()
    rounds, labels = np.array([r["round"] for r in rows]), np.array([r["label"] for r in rows])
elif what == "columns":
    rounds, labels = pool.column("round"), pool.column("label")
if what != "open":
    out["columns_s"] = time.perf_counter() - t0
if what != "open":
    assert len(rounds) == len(labels) == len(pool)
    n = int(sys.argv[3])
    recs = [{"label": i % 10, "seed": -1 - i, "round": 99, "omega": 0.0} for i in range(n)]
    t0 = time.perf_counter(); pool.append(np.zeros((n, 1, 1), np.uint8), recs)
    out["append_s"] = time.perf_counter() - t0
out["peak_rss_mb"] = peak_mb()
print(json.dumps(out))
"""


def measure(root: Path, what: str, per_shard: int, src: str) -> dict:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", CHILD, str(root), what, str(per_shard)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--shard-rows", type=int, default=10_000)
    ap.add_argument("--dir", help="build here (default: a temp folder, deleted after)")
    ap.add_argument("--old-src", help="also open the pool with this older checkout's src")
    ap.add_argument("--rebuild", action="store_true", help="also time an open without columns/")
    ap.add_argument("--records-max", type=int, default=2_000_000,
                    help="time records() only up to this many rows (it holds ~2.5 KB per row)")
    ap.add_argument("--keep", help="build in (or reuse) this folder's pool/ and keep it")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes for the open-only row")
    args = ap.parse_args()
    src = str(Path(__file__).resolve().parents[1] / "src")
    with contextlib.ExitStack() as stack:
        tmp = args.keep or stack.enter_context(tempfile.TemporaryDirectory(dir=args.dir))
        root = Path(tmp) / "pool"
        t0, how = time.perf_counter(), "reused"
        if not (root / "pool.json").exists():
            build(root, args.rows, args.shard_rows)
            how = f"built in {time.perf_counter() - t0:.0f} s"
        before = len(Pool(root))
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        print(f"pool of {before:,} rows in {len(Pool(root).shards):,} shards ({how}), "
              f"{size / 2**20:,.0f} MiB on disk, manifest "
              f"{(root / 'manifest.jsonl').stat().st_size / 2**20:,.0f} MiB")  # fmt: skip
        base = measure(root, "baseline", 0, src)["peak_rss_mb"]
        opens = [measure(root, "open", 0, src) for _ in range(args.repeats)]
        rows = [(f"open only (median of {args.repeats} processes)",
                 {k: statistics.median(o[k] for o in opens) for k in opens[0]}),
                ("columns (this branch)", measure(root, "columns", args.shard_rows, src))]  # fmt: skip
        if before <= args.records_max:
            rows.append(("records() (every row a dict)",
                         measure(root, "records", args.shard_rows, src)))  # fmt: skip
        if args.old_src:
            rows.append(("old open (parses the manifest)", measure(root, "open", 0, args.old_src)))
        if args.rebuild:
            for p in (root / "columns").iterdir():
                p.unlink()
            rows.append(("open without columns/ (rebuild)", measure(root, "open", 0, src)))
        appended = sum("append_s" in m for _, m in rows) * args.shard_rows
        assert len(Pool(root)) == before + appended
    print(f"\nbaseline (python + numpy + deliberate.data.pool, no pool): {base:,.0f} MB peak RSS")
    print(f"\n| {before:,} rows | open s | RSS after open MB (above baseline) | round+label s "
          "| append s | peak RSS MB (above baseline) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, m in rows:
        cells = [f"{m['open_s']:,.2f}", f"{m['open_rss_mb']:,.0f} ({m['open_rss_mb'] - base:,.0f})"]
        cells += ["-" if m.get(k) is None else f"{m[k]:,.2f}" for k in ("columns_s", "append_s")]
        cells += [f"{m['peak_rss_mb']:,.0f} ({m['peak_rss_mb'] - base:,.0f})"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
