"""Soak: SIGKILL tiny `deliberate run`s at random moments until they finish; count what was lost.

Usage: python benchmarks/kill_soak.py [--kills 50] [--seed 0] [--out DIR]

Each run is the kill suite's tiny run (tests/helpers.py: a tiny random generator, real
Fashion-MNIST, 3 pool shards, 40 iterations, one branch-out). Run it from a checkout nobody edits
meanwhile: forked runs import some modules lazily. It is forked, killed by SIGKILL
after a random delay (seeded; uniform over 0..1.1x the uninterrupted run's time, so kills land in
imports, sampling, writes, training and the report alike), and started again with the same
command, until it exits 0; then the next run. The table counts kills, runs that survived
(finished with the reference's bytes), and over all runs the images lost, duplicated and
differing, the metrics rows that differ, and temp files left behind. Not part of CI: about
10-20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the kill suite's tiny run and generator (tests/helpers.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tests.helpers import TIMING_KEYS, TORCH_DEFAULT_SEED, cli_args, make_generator  # noqa: E402

import deliberate.report  # noqa: E402, F401  (imported once here, not in every forked run)
from deliberate.cli import main  # noqa: E402
from deliberate.data.pool import Pool  # noqa: E402


class _Temp:
    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=name, dir=self.root))


def start(args: list[str], log: Path) -> int:
    """Fork a child running `deliberate <args>` (output to `log`); its pid."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1), os.dup2(fd, 2)
            torch.manual_seed(TORCH_DEFAULT_SEED)
            code = main(args)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


PHASES = ("start-up", "round 0", "training to round 1", "after the fork: training, round 2, "
          "branch-out, summary", "finishing: summary.json written, the report")  # fmt: skip


def phase(out: Path) -> str:
    """Where a kill landed, judged from what is on disk."""
    if not (out / "pool" / "manifest.jsonl").exists():
        return PHASES[0]
    if not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").stat().st_size:
        return PHASES[1]
    if not (out / "branches").exists():
        return PHASES[2]
    return PHASES[3] if not (out / "summary.json").exists() else PHASES[4]


def rows(path: Path) -> list[dict]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in lines]


def compare(ref: Path, out: Path) -> dict:
    """What the finished, killed run lost, duplicated or changed against the reference."""
    a, b = Pool(ref / "pool"), Pool(out / "pool")
    ra, rb = a.records(), b.records()
    ia, ib = a.load_all()[0], b.load_all()[0]
    seeds_a, seeds_b = [r["seed"] for r in ra], [r["seed"] for r in rb]
    by_seed = {s: i for i, s in enumerate(seeds_b)}
    lost = [s for s in seeds_a if s not in by_seed]
    differing = sum(1 for i, s in enumerate(seeds_a)
                    if s in by_seed and not np.array_equal(ia[i], ib[by_seed[s]]))  # fmt: skip
    files = sorted(p.relative_to(ref).as_posix() for p in (ref / "pool").rglob("*") if p.is_file())
    same_bytes = all((out / f).is_file() and (ref / f).read_bytes() == (out / f).read_bytes()
                     for f in files)  # fmt: skip
    ma, mb = rows(ref / "metrics.jsonl"), rows(out / "metrics.jsonl")
    return {
        "lost": len(lost),
        "duplicated": len(seeds_b) - len(set(seeds_b)),
        "differing": differing,
        "extra": max(0, len(set(seeds_b)) - len(set(seeds_a))),
        "metrics_differing": sum(x != y for x, y in zip(ma, mb, strict=False))
        + abs(len(ma) - len(mb)),
        "temp_left": len(list(out.rglob(".*.tmp"))),
        "identical": same_bytes and ma == mb and b.verify() == len(b),
    }


def main_(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50, help="stop after this many kills (>= 1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--max-per-run", type=int, default=6, help="kills before a run may finish")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = a.out or Path(tempfile.mkdtemp(prefix="kill-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    gen = make_generator(_Temp(work))
    ref = work / "ref"
    shutil.rmtree(ref, ignore_errors=True)
    t0 = time.perf_counter()
    _, status = os.waitpid(start(cli_args(ref, gen), work / "ref.log"), 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print((work / "ref.log").read_text()[-2000:], file=sys.stderr)
        return 1
    t_ref = time.perf_counter() - t0
    rng = random.Random(a.seed)
    kills, runs, phases, t_start = 0, [], {}, time.perf_counter()
    while kills < a.kills:
        out = work / f"run-{len(runs):03d}"
        shutil.rmtree(out, ignore_errors=True)
        args, log, mine = cli_args(out, gen), work / f"run-{len(runs):03d}.log", 0
        while True:
            pid = start(args, log)
            killable = mine < a.max_per_run and kills < a.kills
            deadline = time.monotonic() + rng.uniform(0, 1.1 * t_ref)
            while killable and time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.005)
            else:
                done = 0
            if not done and killable:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                if os.waitstatus_to_exitcode(status) == -signal.SIGKILL:
                    kills, mine = kills + 1, mine + 1
                    where = phase(out)
                    phases[where] = phases.get(where, 0) + 1
                    continue
            elif not done:
                _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                print(f"run {out} exited {code} after {mine} kills:\n"
                      f"{log.read_text()[-2000:]}", file=sys.stderr)  # fmt: skip
                return 1
            break
        runs.append({"kills": mine, **compare(ref, out)})
        print(f"run {len(runs)}: {mine} kills (total {kills}), identical: {runs[-1]['identical']}",
              file=sys.stderr, flush=True)  # fmt: skip
    seconds = time.perf_counter() - t_start
    total = {k: sum(r[k] for r in runs) for k in ("lost", "duplicated", "differing", "extra",
                                                  "metrics_differing", "temp_left")}  # fmt: skip
    print(
        f"kill soak: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, seed {a.seed}, {time.strftime('%Y-%m-%d')}"
    )
    print(f"uninterrupted run {t_ref:.1f} s; soak {seconds / 60:.1f} min\n")
    print(
        "| runs | SIGKILLs | kills per run (median, max) | runs identical to the reference "
        "| images lost | duplicated | differing | extra | metrics rows differing | temp files left |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    per = [r["kills"] for r in runs]
    print(
        f"| {len(runs)} | {kills} | {statistics.median(per):g}, {max(per)} | "
        f"{sum(r['identical'] for r in runs)} / {len(runs)} | {total['lost']} | "
        f"{total['duplicated']} | {total['differing']} | {total['extra']} | "
        f"{total['metrics_differing']} | {total['temp_left']} |"
    )
    print("\n| where the kill landed | kills |\n|---|---|")
    for where in PHASES:
        print(f"| {where} | {phases.get(where, 0)} |")
    if a.out is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["identical"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main_())
