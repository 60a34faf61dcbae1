"""Generate batches into a pool: batching, shards, resume, torchrun.

Every image is a function of (generator, label, seed, settings): `rounds.plan` fixes the
(label, seed) list of a request up front, and `generate_into_pool` skips the seeds the pool
already holds, so re-running an interrupted request finishes it without duplicating or changing
any image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch
from tqdm.auto import tqdm

from deliberate import distributed
from deliberate.config import check_fields
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError
from deliberate.generators.base import Backend, to_uint8
from deliberate.sampling import SampleOutput, SamplerSettings, sample


def check_classes(backend: Backend, classes: Sequence[int] | None) -> list[int]:
    """Validate requested class ids against the generator; default: all of them."""
    if classes is None or len(classes) == 0:
        return list(range(backend.num_classes))
    bad = [c for c in classes if not 0 <= c < backend.num_classes]
    if bad:
        raise DeliberateError(
            f"class ids {bad} are outside the generator's 0..{backend.num_classes - 1} "
            f"({', '.join(backend.class_names)})"
        )
    return list(classes)


SampleFn = Callable[[torch.Tensor, list[int]], SampleOutput]


def generate_into_pool(
    backend: Backend,
    pool: Pool,
    pairs: list[tuple[int, int]],
    settings: SamplerSettings,
    *,
    batch_size: int = 250,
    extra: dict | None = None,
    sample_fn: SampleFn | None = None,
    progress: bool = True,
) -> dict:
    """Sample the pairs the pool lacks, one shard per batch; returns counts and timing.

    Under torchrun the batches are dealt out round-robin by rank (batch j to rank j % K); each
    rank stages its shards and rank 0 commits them in plan order, so ids, shards and pixels are
    the same whatever K is. Every rank must call this with the same arguments.
    """
    check_fields(settings)
    have = set(pool.column("seed").tolist())
    todo = [(y, s) for y, s in pairs if s not in have]
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    # Batch j becomes shard first_shard + j with ids from first_id + j * batch_size.
    first_shard, first_id = len(pool.shards), len(pool)
    done = set()  # batches staged by an interrupted run of this same request
    if distributed.is_main():
        staged = pool.staged()
        wanted = {first_shard + j: [s for _, s in b] for j, b in enumerate(batches)}
        done = {n for n, seeds in staged.items() if wanted.get(n) == seeds}
        pool.unstage(set(staged) - done)  # leftovers of another request, so none is committed
    done = distributed.broadcast(done)
    mine = [j for j in distributed.strided(range(len(batches))) if first_shard + j not in done]
    if sample_fn is None:

        def sample_fn(labels, seeds):
            return sample(backend, labels, seeds, settings)

    t0 = time.perf_counter()
    bar = tqdm(
        total=len(pairs),
        initial=len(pairs) - len(todo) + sum(len(batches[n - first_shard]) for n in done),
        desc="generate",
        unit="img",
        disable=not progress or not distributed.is_main(),
    )
    for j in mine:
        chunk = batches[j]
        labels = torch.tensor([y for y, _ in chunk])
        seeds = [s for _, s in chunk]
        out = sample_fn(labels, seeds)
        images = to_uint8(out.images.detach().cpu()).numpy()
        records = []
        for i, (y, s) in enumerate(chunk):
            row = {
                "label": y,
                "seed": s,
                "generator": backend.identifier,
                **asdict(settings),
                **(extra or {}),
            }
            for key, values in out.extras.items():
                row[key] = float(values[i])
            records.append(row)
        pool.stage(images, records, shard=first_shard + j, first=first_id + j * batch_size)
        if distributed.is_main():
            pool.commit()  # publish the contiguous prefix as it grows
        bar.update(min(len(chunk) * distributed.world_size(), bar.total - bar.n))  # rank 0's view
    distributed.barrier()  # every rank's shards are staged
    if distributed.is_main():
        pool.commit()
        if missing := first_id + len(todo) - len(pool):
            raise DeliberateError(
                f"pool at {pool.root}: {missing} images of this request were not staged; "
                "re-run the same command to finish it"
            )
    distributed.barrier()
    pool.refresh()  # every rank sees what rank 0 committed
    bar.close()
    seconds = time.perf_counter() - t0
    return {
        "requested": len(pairs),
        "generated": len(todo),
        "seconds": seconds,
        "images_per_second": len(todo) / seconds if todo and seconds > 0 else float("nan"),
    }
