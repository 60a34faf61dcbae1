"""Generate class-balanced batches into a pool: planning seeds, batching, shards, resume.

Every image is a function of (generator, label, seed, settings): `plan` fixes the (label, seed)
list of a request up front, and `generate_into_pool` skips the seeds the pool already holds, so
re-running an interrupted request finishes it without duplicating or changing any image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError
from deliberate.generators.base import Backend, to_uint8
from deliberate.sampling import SampleOutput, sample

SEED_STRIDE = (
    1_000_000_000  # image seed = request seed * stride + index: collision-free per request
)


@dataclass(frozen=True)
class SamplerSettings:
    """What, besides label and seed, determines an image."""

    steps: int = 10
    cfg: float = 0.5  # CFG λ: 0.5 met both the fidelity and usefulness bars (BENCHMARKS.md)
    eta: float = 0.0
    scheduler: str = "ddim"

    def validate(self) -> None:
        if self.steps < 1:
            raise DeliberateError(f"steps={self.steps} must be >= 1")
        if self.cfg < 0:
            raise DeliberateError(
                f"cfg={self.cfg} must be >= 0 (paper convention: (1+cfg)·cond − cfg·uncond)"
            )
        if not 0 <= self.eta <= 1:
            raise DeliberateError(f"eta={self.eta} must be in [0, 1]")


def plan(
    classes: Sequence[int], per_class: int, seed: int, start: int = 0
) -> list[tuple[int, int]]:
    """(label, seed) pairs, classes interleaved so that any prefix is class-balanced."""
    if per_class < 1:
        raise DeliberateError(f"--per-class {per_class} must be >= 1")
    if seed < 0 or seed >= 2**31:
        raise DeliberateError(f"--seed {seed} must be in [0, 2^31)")
    pairs = []
    for _ in range(per_class):
        for c in classes:
            pairs.append((int(c), seed * SEED_STRIDE + start + len(pairs)))
    return pairs


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
    """Sample the pairs the pool lacks, one shard per batch; returns counts and timing."""
    settings.validate()
    have = {int(r["seed"]) for r in pool.records()}
    todo = [(y, s) for y, s in pairs if s not in have]
    if sample_fn is None:

        def sample_fn(labels, seeds):
            return sample(
                backend,
                labels,
                seeds,
                steps=settings.steps,
                cfg=settings.cfg,
                eta=settings.eta,
                scheduler=settings.scheduler,
            )

    t0 = time.perf_counter()
    bar = tqdm(
        total=len(pairs),
        initial=len(pairs) - len(todo),
        desc="generate",
        unit="img",
        disable=not progress,
    )
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
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
        pool.append(images, records)
        bar.update(len(chunk))
    bar.close()
    seconds = time.perf_counter() - t0
    return {
        "requested": len(pairs),
        "generated": len(todo),
        "seconds": seconds,
        "images_per_second": len(todo) / seconds if todo and seconds > 0 else float("nan"),
    }
