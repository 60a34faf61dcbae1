"""learner.loader: workers: DataLoader minibatches keyed by (seed, step), whatever the workers."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch

from deliberate.data.pool import Pool
from deliberate.loader import LoaderSampler, step_indices
from tests.helpers import cli_args, fork_run, make_generator, needs_data


def small_pool(root):
    pool = Pool.open_or_create(root, {"class_names": list("abcd")})
    rng = np.random.default_rng(0)
    for j, n in enumerate((30, 20)):  # two rounds: the newest can be up-weighted
        records = [{"label": i % 4, "seed": i, "round": j} for i in range(n)]
        pool.append(rng.integers(0, 256, (n, 6, 6), dtype=np.uint8), records)
    return pool


def batches(pool, *, workers, start, stop, weight=1.0, part=slice(None)):
    rounds = np.array([r["round"] for r in pool.records()])
    sampler = LoaderSampler(pool.images_view(), pool.labels(), rounds, weight, seed=7,
                            batch_size=8, part=part, start=start, stop=stop, workers=workers)  # fmt: skip
    return [sampler(torch.Generator(), 8, part) for _ in range(stop - start)]


@pytest.mark.parametrize("weight", [1.0, 3.0])
def test_batches_depend_on_seed_and_step_only(tmp_path, weight):
    pool = small_pool(tmp_path / "pool")
    ref = batches(pool, workers=0, start=0, stop=6, weight=weight)
    images, labels = pool.get(step_indices(7, 4, len(pool), 8).numpy())
    if weight == 1.0:  # the batch of step 4 is the pool's images at that step's ids
        assert torch.equal(ref[4][0], torch.as_tensor(images))
        assert torch.equal(ref[4][1], torch.as_tensor(labels))
    for workers in (1, 2):
        got = batches(pool, workers=workers, start=0, stop=6, weight=weight)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ref, got, strict=True))
    resumed = batches(pool, workers=2, start=3, stop=6, weight=weight)  # no loader state needed
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ref[3:], resumed, strict=True))
    share = batches(pool, workers=1, start=0, stop=6, weight=weight, part=slice(4, 8))  # rank 1
    assert all(torch.equal(a[0][4:], b[0]) for a, b in zip(ref, share, strict=True))
    assert not torch.equal(ref[0][0], ref[1][0])


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """Overrides conftest's: a "generator.path=..,data_dir=.." pair for `cli_args`."""
    return make_generator(tmp_path_factory)


@needs_data
def test_a_run_with_loader_workers_is_the_same_for_any_worker_count(generator, tmp_path):
    rows = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        args = [*cli_args(out, generator), "--set=learner.loader=workers",
                f"--set=learner.workers={workers}", "--set=practice.branch_outs=false"]  # fmt: skip
        assert fork_run(args) == 0, out.with_suffix(".err").read_text()
        rows[workers] = [{k: v for k, v in json.loads(line).items() if not k.startswith("seconds")}
                         for line in (out / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
    assert rows[0] == rows[2] and len(rows[0]) == 4


@needs_data
@pytest.mark.parametrize("fault", ["train.step:15", "checkpoint.renamed:3"])
def test_a_killed_run_with_loader_workers_resumes_to_the_same_metrics(generator, tmp_path, fault):
    """SIGKILL with two DataLoader workers alive (mid window, or just after a checkpoint), then
    the same command: the same pool and metrics as the run that was never killed."""
    sets = ["--set=learner.loader=workers", "--set=learner.workers=2",
            "--set=practice.branch_outs=false"]  # fmt: skip
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert fork_run([*cli_args(ref, generator), *sets]) == 0, ref.with_suffix(".err").read_text()
    args = [*cli_args(out, generator), *sets]
    assert fork_run(args, fault) == -signal.SIGKILL, f"{fault} was never reached"
    assert fork_run(args) == 0, out.with_suffix(".err").read_text()

    def rows(run):
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("seconds")}
                for line in (run / "metrics.jsonl").read_text().splitlines()]  # fmt: skip

    assert rows(out) == rows(ref) and len(rows(ref)) == 4
    assert (out / "pool" / "manifest.jsonl").read_bytes() == (
        ref / "pool" / "manifest.jsonl"
    ).read_bytes()
