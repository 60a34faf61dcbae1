"""Candidates on disk (deliberate.candidates): an oversampled round's R x P candidates go to
RUN/candidates/round-k/ instead of RAM, and the round is the same bytes as the in-RAM choice."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from deliberate import candidates
from deliberate.config import load_config
from deliberate.data.pool import Pool
from deliberate.generators import pool_meta
from deliberate.practice import PracticeConfig, run_practice
from deliberate.rounds import ROUND_STRIDE, plan
from tests.helpers import (
    CONFIGS,
    SMALL,
    TORCH_DEFAULT_SEED,
    machine,
    needs_data,
    tiny_backend,
    tiny_generator_dir,
)

# helpers.SMALL on helpers.tiny_backend(seed=1), branch-outs off, practice.oversample=2.5: round
# 1 keeps 10 of 25 candidates. sha256 of each pool file and of the metrics rows (without
# seconds), recorded with the in-RAM implementation this replaced (commit 575d46d). Re-recorded
# when scoring moved to learner.inference_copy: the stored entropies changed by float rounding
# (round 1's shard `rows`, the manifest, its column file); every shard's ids, images and labels,
# so the choice itself, were checked equal to the in-RAM implementation's first.
XEON = "Intel(R) Xeon(R) Processor | AVX512 | torch 2.14.1+cu130"
EPYC = "AMD EPYC | AVX512 | torch 2.14.1+cu130"
PINNED = {  # per machine (helpers.machine): the floats, so the entropies' bytes, depend on it
    XEON: {
        "columns/shard-000000.npz": "1b48f7387c4c28e3fca0a6125274e4000d1d00c6f347bf586bb5d952585ff410",
        "columns/shard-000001.npz": "216c2f77b5519241e331b8f7280aa546e8a4db5e4298a4ce6cf74c4a8bb826dd",
        "columns/shard-000002.npz": "0995659da5a7de74f6f8329a625c451929be145649886e5f0db7ed11f8e70b5c",
        "manifest.jsonl": "6c1ef72f95a73b8ce33da9ce1532f5cd476153d575434f58a072ca4c6fed303b",
        "pool.json": "f69730bfd8f6ee2e1c473062a0f06ff44f1ee5b46a09fe9df57f57be8fae50a3",
        "shards/shard-000000.npz": "f0c0cf880c35e25fbd9f8a1934ee208e90fd8b5e86c2465195f13f4270210878",
        "shards/shard-000001.npz": "e178db8346c6a8b7c4d0a3e650681d99be7cc886b0f405166d26adf8a3304cd6",
        "shards/shard-000002.npz": "c2a51bc591e4bd7dde20e84c52b3a2e49646d3f4efec64bd9c8ab058c78456ce",
    },
}
PINNED[EPYC] = {  # recorded 2026-12-02; round 0's shards equal the Xeon's, round 1's differ by rounding
        "columns/shard-000000.npz": "1b48f7387c4c28e3fca0a6125274e4000d1d00c6f347bf586bb5d952585ff410",
        "columns/shard-000001.npz": "216c2f77b5519241e331b8f7280aa546e8a4db5e4298a4ce6cf74c4a8bb826dd",
        "columns/shard-000002.npz": "65ef80889c8ccb264b6c2189463ed0c7c9a25571c53c28cbaac52546d2eb190c",
        "manifest.jsonl": "6afb3dc9f845e7e999baf6b3ae041a0e48d5982a2e3d69a2127d8fae998db1ea",
        "pool.json": "f69730bfd8f6ee2e1c473062a0f06ff44f1ee5b46a09fe9df57f57be8fae50a3",
        "shards/shard-000000.npz": "f0c0cf880c35e25fbd9f8a1934ee208e90fd8b5e86c2465195f13f4270210878",
        "shards/shard-000001.npz": "e178db8346c6a8b7c4d0a3e650681d99be7cc886b0f405166d26adf8a3304cd6",
        "shards/shard-000002.npz": "a33ad85fc1c26ad7f90e99e71c73bf160d030023dbd9c3452f9125fdd71af2e8",
}
PINNED_METRICS = {EPYC: "e4712cfcf6b748a4f3d32f01489b54b516a165f29fa6be844d6fd5e008ef3968", XEON: "cc8c68740e1ad65772993e74d3f90b25e53594b19d1128d13ccca745a4b4a933"}


@needs_data
def test_candidates_on_disk_give_the_bytes_of_the_in_ram_choice(tmp_path_factory, tmp_path):
    generator = tiny_generator_dir(tmp_path_factory)
    sets = [f"generator.path={generator}", *SMALL, "practice.branch_outs=false",
            "practice.oversample=2.5"]  # fmt: skip
    torch.manual_seed(TORCH_DEFAULT_SEED)  # as in a fresh process (the pinned run was one)
    out = tmp_path / "run"
    run_practice(load_config(PracticeConfig, CONFIGS / "tiny.yaml", sets), out, progress=False)
    pool = out / "pool"
    got = {p.relative_to(pool).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
           for p in pool.rglob("*") if p.is_file() and p.name != ".lock"}  # fmt: skip
    if machine() not in PINNED:
        pytest.skip(f"no pinned bytes for this machine ({machine()}); got {got}")
    assert got == PINNED[machine()]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if not k.startswith("seconds_")} for r in rows]
    assert hashlib.sha256(json.dumps(rows).encode()).hexdigest() == PINNED_METRICS[machine()]
    assert not (out / "candidates").exists()
    assert sorted(set(Pool(pool).column("round").tolist())) == [0, 1]


def test_a_staging_pool_of_another_learner_or_plan_is_begun_again(tmp_path):
    backend = tiny_backend()
    pairs = plan(range(10), 2, 0, ROUND_STRIDE)
    stale = Pool.create(candidates.folder(tmp_path, 1), pool_meta(backend))
    images = np.zeros((10, 28, 28), np.uint8)
    stale.append(images, [{"label": y, "seed": s, "fingerprint": "old"} for y, s in pairs[:10]])
    assert len(candidates._open(tmp_path, 1, backend, pairs, "old")) == 10  # resumed
    assert len(candidates._open(tmp_path, 1, backend, pairs, "new")) == 0  # another learner
    stale = candidates._open(tmp_path, 1, backend, pairs, "new")
    stale.append(images, [{"label": y, "seed": s, "fingerprint": "new"} for y, s in pairs[10:]])
    assert len(candidates._open(tmp_path, 1, backend, pairs, "new")) == 0  # not a prefix


def test_removing_is_a_rename_then_a_delete(tmp_path):
    Pool.create(candidates.folder(tmp_path, 2), {"image_shape": [28, 28], "num_classes": 10})
    (tmp_path / "candidates" / ".round-1.removing" / "shards").mkdir(parents=True)  # a kill's
    candidates.remove(tmp_path, 2)
    assert not (tmp_path / "candidates").exists()
    candidates.remove(tmp_path, 2)  # nothing left: a no-op
