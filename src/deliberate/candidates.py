"""Candidates on disk: the R x P candidates of an oversampled round (`practice.oversample`).

    RUN/candidates/round-k/    a pool of every candidate, sampled and scored batch by batch
    choose                     the P highest-entropy per class, read from its entropy column
    RUN/pool                   the chosen appended, exactly as they were sampled and scored
    remove                     the staging pool deleted once the round is in the pool

Only a batch of images is in memory at any time (the in-RAM version held all R x P until the
choice), and a killed round resumes from the candidates already on disk: `generate_into_pool`
skips their seeds and samples the rest in the same batches, guided by the same checkpointed
learner, so the round comes out as an uninterrupted one's, byte for byte.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from deliberate import distributed, faults
from deliberate.data.files import check_folder
from deliberate.data.pool import RESERVED, Pool
from deliberate.errors import DeliberateError
from deliberate.generate import SampleFn, generate_into_pool
from deliberate.generators import pool_meta
from deliberate.learner import to_float01
from deliberate.sampling import SampleOutput
from deliberate.selection import select_top_entropy

FOLDER = "candidates"


def folder(root: str | Path, k: int) -> Path:
    return Path(root) / FOLDER / f"round-{k}"


def _open(root, k: int, backend, plan: list, fingerprint: str | None) -> Pool:
    """The staging pool of round k; one that is not a prefix of this round's candidates
    (another plan, another learner) is deleted and begun again."""
    path = folder(root, k)
    if check_folder(path.parent) and check_folder(path):
        pool = Pool.open_or_create(path, pool_meta(backend))
        cols = pool.columns(["label", "seed"])
        mine = [(int(y), int(s)) for y, s in zip(cols["label"], cols["seed"], strict=True)]
        first = pool.records([0]) if len(pool) else [{"fingerprint": fingerprint}]
        if mine == plan[: len(mine)] and first[0].get("fingerprint") == fingerprint:
            return pool
        shutil.rmtree(path)
    return Pool.create(path, pool_meta(backend))


def choose(cfg, backend, root, k: int, plan: list, n: int, sample_fn: SampleFn, extra: dict,
           progress: bool) -> tuple[list, SampleFn]:  # fmt: skip
    """Sample and score every candidate of round k into its staging pool (resuming from those
    already there), keep the n highest-entropy per class. Returns the kept (label, seed) pairs
    and a sample_fn that hands back their images and scores from disk, so the run's pool is
    written the usual way (`generate_into_pool`), one batch in memory at a time."""
    if distributed.world_size() > 1:
        raise DeliberateError(
            "practice.oversample > 1 runs in one process only; drop torchrun or set it to 1"
        )
    s = cfg.generator.sampler
    cands = _open(root, k, backend, plan, extra.get("fingerprint"))
    generate_into_pool(backend, cands, plan, s, batch_size=cfg.generator.batch_size,
                       extra=extra, sample_fn=sample_fn, progress=progress)  # fmt: skip
    faults.point("candidates.sampled")
    cols = cands.columns(["label", "seed", "entropy"])
    chosen = select_top_entropy(cols["entropy"], cols["label"], n, backend.num_classes)
    ids = {int(seed): i for i, seed in enumerate(cols["seed"])}
    base = {*RESERVED, "label", "seed", "generator", *asdict(s), *extra}  # the pool's own keys

    def replay(labels, seeds):  # the chosen candidates, exactly as sampled and scored
        rows_ids = np.array([ids[seed] for seed in seeds], np.int64)
        rows = cands.records(rows_ids)
        images = cands.images_view()[rows_ids]  # a fresh view: no shard stays mapped
        out = SampleOutput(to_float01(images))
        keys = [key for key in rows[0] if key not in base]  # the scores, in the sampler's order
        out.extras = {
            key: torch.tensor([r[key] for r in rows], dtype=torch.float64) for key in keys
        }
        return out

    return [plan[i] for i in chosen], replay


def remove(root, k: int) -> None:
    """Delete round k's staging pool: renamed first, so a kill never leaves half of one (a
    half-deleted `.round-j.removing` of a killed removal goes too)."""
    path, gone = folder(root, k), Path(root) / FOLDER / f".round-{k}.removing"
    if not check_folder(path.parent):
        return
    for left in path.parent.glob(".round-*.removing"):
        if check_folder(left):  # a symlink there is refused, never followed
            shutil.rmtree(left)
    if check_folder(path):
        path.rename(gone)
        faults.point("candidates.removing")
        shutil.rmtree(gone)
    if not any(path.parent.iterdir()):
        path.parent.rmdir()
