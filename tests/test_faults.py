"""Crash safety for real: kill `deliberate run` at every named point, re-run it, compare.

Each run is a child process. Most are forked from this (already imported) test process and call
`deliberate.cli.main`, which spares ~6 s of imports per run on a 2-core machine; the child dies
by a real SIGKILL (or SIGTERM/SIGINT) from the kernel exactly as an exec'd CLI would. Two runs
are exec'd `python -m deliberate.cli` (an external SIGTERM, and the determinism run), which also
checks that forked and exec'd runs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import deliberate.report  # noqa: F401  (imported once here: forked runs skip matplotlib's import)
from deliberate import faults
from deliberate.data.pool import Pool
from tests.helpers import TIMING_KEYS, cli_args, fork_run, make_generator, needs_data

SRC = Path(__file__).resolve().parent.parent / "src"
pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork"),
    reason="needs os.fork and POSIX signals",
)
# How often the uninterrupted run (cli_args: helpers.SMALL, 3 shards, evaluations at 10..40, round
# 1 decided at 30, one branch-out) reaches each point; `test_hit_counts_are_the_tables` keeps it
# honest. Every point is killed at its first and its last hit.
HITS = {
    "run.claimed": 1, "config.tmp_written": 1, "pool.repair_torn": 1, "pool.created": 1,
    "generate.batch": 3, "generate.sampled": 3, "pool.shard_tmp_written": 3, "pool.staged": 3,
    "pool.shard_renamed": 3, "pool.manifest_torn": 3, "pool.manifest_written": 3,
    "round.generated": 2, "checkpoint.torn": 8, "checkpoint.tmp_written": 8,
    "checkpoint.renamed": 8, "train.step": 50, "eval.done": 5, "metrics.torn": 5,
    "metrics.appended": 5, "round.decided": 1, "fork.saved": 1, "branch.started": 1,
    "branch.finished": 1, "report.started": 1, "report.written": 1,
}  # fmt: skip
# A point reached once per run is killed again on the re-run, at its first hit there, except
# these, which a re-run does not reach again (the empty pool's first rows are on disk).
ONCE = {"pool.repair_torn"}
MIDDLE = [("generate.batch", 2), ("train.step", 15), ("checkpoint.torn", 2)]  # mid-run states


def kill_chains(hits: dict[str, int], middle=(), once=frozenset()) -> list[tuple[str, ...]]:
    """Each chain is the faults of successive runs of one command, every run killed at its own
    fault and resumed by the next; a last, clean run finishes."""
    chains = []
    for p, n in hits.items():
        if n == 1:
            chains.append((f"{p}:1",) if p in once else (f"{p}:1", f"{p}:1"))
        else:
            chains += [(f"{p}:1",), (f"{p}:{n}",)]
    return chains + [(f"{p}:{n}",) for p, n in middle]


KILLS = [
    *kill_chains(HITS, MIDDLE, ONCE),
    ("pool.manifest_torn:3", "pool.repair_torn:1"),  # killed while repairing a torn manifest
]
# Budget branches (learner.budgets) instead of branch-outs: the 20-step budget forks at step 16.
BUDGETS = ["practice.branch_outs=false", "learner.budgets=[20]"]
# budget.forked is reached once per run folder: a re-run resumes past the saved fork.
BUDGET_KILLS = [("budget.forked:1",), ("train.step:30",), ("checkpoint.renamed:6",)]
# Candidates on disk (practice.oversample=2): round 1 samples 20 candidates in 2 batches into
# candidates/round-1/ (generate.batch hits 3-4, pool.manifest_written 3-4) and keeps 10 (hit 5).
OVERSAMPLE = ["--set=practice.oversample=2"]
CANDIDATE_HITS = {"candidates.sampled": 1, "candidates.removing": 1}
CANDIDATE_KILLS = [
    ("generate.batch:4",),  # one candidate shard on disk
    ("candidates.sampled:1",),  # all 20 on disk, none chosen
    ("pool.manifest_written:5",),  # the chosen 10 in the pool, the candidates not yet removed
    ("candidates.removing:1",),  # the candidates' folder renamed, not yet deleted
]
# A shared round 0 (--cache): a hit links round 0's 2 shards (pool.shard_renamed 1-2 commit
# them); a miss samples them and publishes the entry. (fault, whether the cache holds it)
CACHE_HITS = {"cache.linked": 1, "cache.entry_written": 1}
CACHE_KILLS = [("cache.linked:1", True), ("pool.shard_renamed:1", True),
               ("cache.entry_written:1", False)]  # fmt: skip


def exec_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "deliberate.cli", *args]


def exec_env(**extra) -> dict:
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """Overrides conftest's: a "generator.path=..,data_dir=.." pair for `cli_args`."""
    return make_generator(tmp_path_factory)


def uninterrupted(tmp_path_factory, name: str, args_of) -> Path:
    """An uninterrupted run of `deliberate <args_of(out)>`; its hits in `counts.json` beside it."""
    out = tmp_path_factory.mktemp(name) / "run"
    code = fork_run(args_of(out), counts=out.parent / "counts.json")
    assert code == 0, out.with_suffix(".err").read_text()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, generator):
    """The uninterrupted run every interrupted one must reproduce."""
    return uninterrupted(tmp_path_factory, "ref", lambda out: cli_args(out, generator))


def run_chain(args: list[str], chain: tuple[str, ...], out: Path) -> None:
    """Kill `deliberate <args>` at each fault of `chain` in turn, then finish it cleanly."""
    for fault in chain:
        assert fork_run(args, fault) == -signal.SIGKILL, f"{fault} was never reached"
        assert_crash_state_is_sane(out)
    assert fork_run(args) == 0, Path(f"{out}.err").read_text()


def strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING_KEYS}


def metrics(path: Path) -> list[dict]:
    return [strip(json.loads(line)) for line in path.read_text().splitlines()]


def assert_same_result(ref: Path, out: Path) -> None:
    """Pool bytes, manifest, metrics (without wall-clock fields), branch results, weights."""
    names = sorted(p.relative_to(ref).as_posix() for p in (ref / "pool").rglob("*") if p.is_file())
    got = sorted(p.relative_to(out).as_posix() for p in (out / "pool").rglob("*") if p.is_file())
    assert got == names  # no stray shard, no temp file left behind
    for name in names:
        assert (ref / name).read_bytes() == (out / name).read_bytes(), name
    assert Pool(out / "pool").verify() == 30
    for sub in ("", "branches/round-0/"):
        assert metrics(out / sub / "metrics.jsonl") == metrics(ref / sub / "metrics.jsonl"), sub
    result = "branches/round-0/result.json"
    assert json.loads((out / result).read_text()) == json.loads((ref / result).read_text())
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (ref, out))
    for part in ("model", "ema"):
        for key, tensor in a["trainer"][part].items():
            assert torch.equal(tensor, b["trainer"][part][key]), (part, key)
    assert a["loop"]["forks"] == b["loop"]["forks"] and a["trainer"]["step"] == 40
    assert (out / "report" / "report.md").stat().st_size > 0
    assert not list(out.rglob(".*.tmp"))


def assert_crash_state_is_sane(out: Path) -> None:
    """What a kill leaves: only whole shards visible; manifest rows whole, unique, contiguous."""
    shards = sorted((out / "pool" / "shards").glob("shard-*.npz")) if out.exists() else []
    total = 0
    for j, path in enumerate(shards):
        assert path.name == f"shard-{j:06d}.npz"
        with np.load(path, allow_pickle=False) as z:
            ids = z["ids"].tolist()
            assert ids == list(range(total, total + len(ids))) and len(z["images"]) == len(ids)
            total += len(ids)
    manifest = out / "pool" / "manifest.jsonl"
    lines = manifest.read_bytes().splitlines(True) if manifest.exists() else []
    whole = [json.loads(line) for line in lines if line.endswith(b"\n")]
    assert len(lines) - len(whole) <= 1 and (not lines or len(whole) >= len(lines) - 1)
    assert [r["id"] for r in whole] == list(range(len(whole)))  # no duplicate, no gap
    assert len(whole) <= total  # every row names an image that is on disk
    assert {r["shard"] for r in whole} <= {p.name for p in shards}


def chain_id(chain: tuple[str, ...]) -> str:
    return "-then-".join(chain)


@needs_data
@pytest.mark.parametrize("chain", KILLS, ids=chain_id)
def test_killed_run_resumes_to_the_identical_result(chain, reference, generator, tmp_path):
    out = tmp_path / "run"
    run_chain(cli_args(out, generator), chain, out)
    assert_same_result(reference, out)


@needs_data
def test_hit_counts_are_the_tables(reference):
    """HITS is what the reference run met: so every kill lands where its comment says."""
    assert json.loads((reference.parent / "counts.json").read_text()) == HITS


@needs_data
@pytest.mark.parametrize("chain", BUDGET_KILLS, ids=chain_id)
def test_killed_budget_run_resumes_to_the_identical_result(chain, generator, tmp_path):
    budget = [f"--set={s}" for s in BUDGETS]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert fork_run([*cli_args(ref, generator), *budget]) == 0, ref.with_suffix(".err").read_text()
    run_chain([*cli_args(out, generator), *budget], chain, out)
    for name in sorted(p.relative_to(ref).as_posix() for p in (ref / "pool").rglob("*")
                       if p.is_file()):  # fmt: skip
        assert (ref / name).read_bytes() == (out / name).read_bytes(), name
    for sub in ("", "budgets/iters-20/"):
        assert metrics(out / sub / "metrics.jsonl") == metrics(ref / sub / "metrics.jsonl"), sub
    result = "budgets/iters-20/result.json"
    assert json.loads((out / result).read_text()) == json.loads((ref / result).read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert [b["iterations"] for b in summary["budgets"]] == [20, 40]


# practice.checkpoint_every=25 (evaluations every 10): after round 0 (step 0) the next
# checkpoint is at step 30, where round 1 is decided; kills before it replay from step 0.
CADENCE_KILLS = [("metrics.appended", 2), ("train.step", 25)]


@needs_data
@pytest.mark.parametrize("point,n", CADENCE_KILLS, ids=[f"{p}:{n}" for p, n in CADENCE_KILLS])
def test_a_checkpoint_cadence_replays_to_the_identical_result(point, n, reference, generator,
                                                              tmp_path):  # fmt: skip
    out = tmp_path / "run"
    args = [*cli_args(out, generator), "--set=practice.checkpoint_every=25"]
    assert fork_run(args, f"{point}:{n}") == -signal.SIGKILL, f"{point}:{n} was never reached"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["trainer"]["step"] == 0  # no checkpoint at the evaluations of steps 10 and 20
    assert fork_run(args) == 0, (tmp_path / "run.err").read_text()
    assert_same_result(reference, out)  # the cadence changes what is written, not the result


# `deliberate prune` writes its final pool with Pool.append: D_0 copied over, then the kept
# candidates (two shards), so each append point is hit twice.
PRUNE = ["practice.branch_outs=false", "prune.ratio=2", "prune.selected=10",
         "learner.iterations=20"]  # fmt: skip
APPEND_HITS = {"pool.append_tmp_written": 2, "pool.append_renamed": 2,
               "pool.append_manifest_torn": 2, "pool.append_manifest_written": 2}  # fmt: skip
APPEND_KILLS = kill_chains(APPEND_HITS)


def prune_args(out: Path, generator: str) -> list[str]:
    args = cli_args(out, generator)
    return ["prune", *args[1:], *(f"--set={s}" for s in PRUNE)]


@pytest.fixture(scope="module")
def prune_reference(tmp_path_factory, generator):
    return uninterrupted(tmp_path_factory, "prune", lambda out: prune_args(out, generator))


@pytest.fixture(scope="module")
def oversampled(tmp_path_factory, generator):
    """The uninterrupted oversampled run (practice.oversample=2)."""
    return uninterrupted(tmp_path_factory, "oversampled",
                         lambda out: [*cli_args(out, generator), *OVERSAMPLE])  # fmt: skip


@needs_data
def test_prune_hit_counts_are_the_tables(prune_reference):
    counts = json.loads((prune_reference.parent / "counts.json").read_text())
    assert {p: n for p, n in counts.items() if p in APPEND_HITS} == APPEND_HITS


@needs_data
@pytest.mark.parametrize("chain", APPEND_KILLS, ids=chain_id)
def test_killed_prune_run_resumes_to_the_identical_pool(chain, prune_reference, generator,
                                                        tmp_path):  # fmt: skip
    """The append path (its own point names) loses nothing either: same pool, same metrics."""
    out = tmp_path / "run"
    run_chain(prune_args(out, generator), chain, out)
    ref, got = Pool(prune_reference / "train" / "pool"), Pool(out / "train" / "pool")
    assert got.verify() == len(ref) == 30 and got.records() == ref.records()  # D_0 + 10 kept
    assert np.array_equal(got.load_all()[0], ref.load_all()[0])
    assert not list(out.rglob(".*.tmp"))
    sub = "train/metrics.jsonl"
    assert metrics(out / sub) == metrics(prune_reference / sub)


@needs_data
@pytest.mark.parametrize("chain", CANDIDATE_KILLS, ids=chain_id)
def test_killed_oversampled_round_resumes_from_its_candidates_on_disk(chain, oversampled,
                                                                      generator, tmp_path):  # fmt: skip
    out = tmp_path / "run"
    args = [*cli_args(out, generator), *OVERSAMPLE]
    (fault,) = chain
    point = fault.split(":")[0]
    assert fork_run(args, fault) == -signal.SIGKILL, f"{fault} was never reached"
    assert_crash_state_is_sane(out)
    staged = out / "candidates" / "round-1"
    if point in ("generate.batch", "candidates.sampled"):  # what was sampled is kept on disk
        assert len(Pool(staged)) == {"generate.batch": 10, "candidates.sampled": 20}[point]
    if point == "candidates.removing":
        assert not staged.exists() and (out / "candidates" / ".round-1.removing").is_dir()
    assert fork_run(args) == 0, (tmp_path / "run.err").read_text()
    assert_same_result(oversampled, out)
    assert not (out / "candidates").exists()  # the staging pool is gone once the round is in


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory, generator, reference):
    """A round-0 cache holding this module's round 0, published by a run that missed it."""
    root = tmp_path_factory.mktemp("cache")
    out = root / "first"
    code = fork_run([*cli_args(out, generator), f"--cache={root / 'cache'}"])
    assert code == 0, out.with_suffix(".err").read_text()
    assert_same_result(reference, out)  # a miss samples round 0 itself: the same result
    return root / "cache"


@needs_data
@pytest.mark.parametrize("fault,hit", CACHE_KILLS, ids=[f for f, _ in CACHE_KILLS])
def test_killed_run_with_a_shared_round_0_resumes_to_the_identical_result(
    fault, hit, request, reference, generator, tmp_path
):
    cache = request.getfixturevalue("filled_cache") if hit else tmp_path / "cache"
    out = tmp_path / "run"
    args = [*cli_args(out, generator), f"--cache={cache}"]
    point = fault.split(":")[0]
    assert fork_run(args, fault) == -signal.SIGKILL, f"{fault} was never reached"
    assert_crash_state_is_sane(out)
    (entry,) = cache.glob("round0-*") if hit else [None]
    if point == "cache.linked":  # the links are the entry's files: the same inodes
        for name in ("shard-000000.npz", "shard-000001.npz"):
            a, b = out / "pool" / "staging" / name, entry / "shards" / name
            assert a.stat().st_ino == b.stat().st_ino
    if point == "cache.entry_written":  # complete but invisible: the next writer removes it
        assert not list(cache.glob("round0-*")) and len(list(cache.glob(".tmp-round0-*"))) == 1
    assert fork_run(args) == 0, (tmp_path / "run.err").read_text()
    assert_same_result(reference, out)
    record = json.loads((out / "round0-cache.json").read_text())
    assert record["reused_images"] == (20 if hit else 0) and record["published"] is not hit
    assert not list(cache.glob(".tmp-*")) and not list(cache.glob(".old-*"))
    (entry,) = cache.glob("round0-*")
    for s in json.loads((entry / "entry.json").read_text())["shards"]:
        assert hashlib.sha256((entry / "shards" / s["name"]).read_bytes()).hexdigest() == s["sha256"]


def test_every_kill_point_is_placed_and_tested():
    """Every point is placed in the code, and killed at its first and last hit by some test."""
    chains = [*KILLS, *BUDGET_KILLS, *APPEND_KILLS, *CANDIDATE_KILLS,
              *((f,) for f, _ in CACHE_KILLS)]  # fmt: skip
    tested = {f for chain in chains for f in chain}
    hits = {**HITS, "budget.forked": 1, **APPEND_HITS, **CANDIDATE_HITS, **CACHE_HITS}
    assert sorted(hits) == sorted(faults.POINTS) and len(faults.POINTS) >= 30
    for p, n in hits.items():
        assert {f"{p}:1", f"{p}:{n}"} <= tested, p
    source = "".join(p.read_text() for p in (SRC / "deliberate").rglob("*.py")
                     if p.name != "faults.py")  # fmt: skip
    for name in faults.POINTS:
        assert f'"{name}"' in source, name


@needs_data
@pytest.mark.parametrize(
    "fault,code,name",
    [
        ("train.step:15:TERM", 143, "SIGTERM"),
        ("generate.batch:2:INT", 130, "SIGINT"),
        ("branch.started:1:TERM", 143, "SIGTERM"),
    ],
    ids=["term-mid-window", "int-mid-round", "term-in-branch"],
)
def test_signal_stops_at_a_safe_point_and_resumes(
    fault, code, name, reference, generator, tmp_path
):
    out = tmp_path / "run"
    args = cli_args(out, generator)
    assert fork_run(args, fault) == code
    err = (tmp_path / "run.err").read_text()
    assert err == f"deliberate: stopped by {name} at a safe point, all work so far saved; " \
        "re-run the same command to resume\n"  # fmt: skip
    if fault.startswith("train.step"):  # stopped right after step 15, checkpointed there
        ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
        assert ckpt["trainer"]["step"] == 15 and len(ckpt["loop"]["losses"]) == 5
    if fault.startswith("generate.batch"):  # the first shard is kept, the second not begun
        assert len(Pool(out / "pool")) == 10
    assert fork_run(args) == 0
    assert_same_result(reference, out)


@needs_data
def test_a_second_sigint_stops_at_once(reference, generator, tmp_path):
    """Ctrl-C twice: the second stops right there, not at the next safe point. A batch sampled
    when the first arrives is then dropped (one SIGINT stores it first), and the re-run still
    finishes identically."""
    patient, out = tmp_path / "patient", tmp_path / "run"
    assert fork_run(cli_args(patient, generator), "generate.sampled:1:INT") == 130
    assert len(Pool(patient / "pool")) == 10  # one signal: the batch is stored, then it stops
    args = cli_args(out, generator)
    assert fork_run(args, "generate.sampled:1:INT:2") == 130
    assert (tmp_path / "run.err").read_text() == (
        "deliberate: stopped at once by a second SIGINT; everything written so far is kept (a "
        "half-written file is discarded); re-run the same command to resume\n"
    )
    assert len(Pool(out / "pool")) == 0 and not (out / "pool" / "staging").exists()
    assert fork_run(args) == 0
    assert_same_result(reference, out)


def test_generate_command_stops_at_a_batch_boundary_and_resumes(generator, tmp_path):
    """`deliberate generate` honours SIGINT between batches too; the re-run completes the pool."""
    path = generator.split(",")[0].split("=", 1)[1]

    def args(out):
        return ["generate", "--generator", path, "--per-class", "3", "--batch-size", "10",
                "--out", str(out), "--quiet"]  # fmt: skip

    assert fork_run(args(tmp_path / "ref")) == 0
    out = tmp_path / "run"
    assert fork_run(args(out), "generate.batch:2:INT") == 130
    assert "stopped by SIGINT at a safe point" in (tmp_path / "run.err").read_text()
    assert len(Pool(out)) == 10  # the first batch is kept, the second never began
    assert fork_run(args(out)) == 0
    ref, run = Pool(tmp_path / "ref"), Pool(out)
    assert [r["seed"] for r in run.records()] == [r["seed"] for r in ref.records()]
    assert np.array_equal(run.load_all()[0], ref.load_all()[0])


@needs_data
def test_external_sigterm_to_the_cli_process(reference, generator, tmp_path):
    """A real `python -m deliberate.cli run` gets SIGTERM from outside once training has begun."""
    out = tmp_path / "run"
    args = cli_args(out, generator)
    proc = subprocess.Popen(exec_cmd(args), env=exec_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert (
        err.endswith(
            "stopped by SIGTERM at a safe point, all work so far saved; "
            "re-run the same command to resume\n"
        )
        and "Traceback" not in err
    )
    assert fork_run(args) == 0
    assert_same_result(reference, out)


@needs_data
def test_same_config_and_seed_give_identical_bytes(reference, generator, tmp_path):
    """Determinism on CPU: an exec'd run equals the forked reference, byte for byte."""
    out = tmp_path / "run"
    done = subprocess.run(exec_cmd(cli_args(out, generator)), env=exec_env(), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert_same_result(reference, out)
    # The whole pool (shards, manifest, header) and every metric but wall-clock time.
    assert (out / "pool" / "manifest.jsonl").read_bytes() == (
        reference / "pool" / "manifest.jsonl"
    ).read_bytes()
    assert metrics(out / "metrics.jsonl") == metrics(reference / "metrics.jsonl")
