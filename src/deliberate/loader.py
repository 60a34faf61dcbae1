"""Minibatches through a torch DataLoader: worker processes read the pool, batches keyed by step.

With `learner.loader: workers` the batch of step s is drawn from a generator seeded by
(seed, s) alone, and `learner.workers` processes read (and, for compressed pools, decode) it
ahead of the learner, with pinned memory on CUDA. So a batch depends on (seed, step) only: not
on the number of workers, not on how far the loader has prefetched, and a resumed run draws the
same batches without saving any loader state. `loader: inline` (the default) keeps drawing
batches in the training process from the trainer's own RNG stream (`training.pool_sampler`),
whose results the tests pin.
"""

from __future__ import annotations

import numpy as np
import torch

from deliberate.training import Batch, newest_round_weights

STEPS = 2**62  # the step keyspace: a map-style dataset whose item s is step s's batch


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator for one step, seeded from (seed, step) by NumPy's SeedSequence hash."""
    state = np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def step_indices(seed: int, step: int, n: int, batch_size: int,
                 weights: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The pool ids of step `step`'s global batch: uniform, or weighted with replacement."""
    g = step_generator(seed, step)
    if weights is None:
        return torch.randint(n, (batch_size,), generator=g)
    return torch.multinomial(weights, batch_size, replacement=True, generator=g)


class StepBatches(torch.utils.data.Dataset):
    """Item s = (uint8 images, labels) of step s's batch: this rank's rows `part` of it."""

    def __init__(self, images, labels, weights, seed: int, batch_size: int, part: slice):
        self.images, self.labels = images, torch.as_tensor(np.asarray(labels))
        self.weights, self.seed, self.batch_size, self.part = weights, seed, batch_size, part

    def __len__(self) -> int:
        return STEPS

    def __getitem__(self, step: int) -> Batch:
        idx = step_indices(self.seed, step, len(self.images), self.batch_size, self.weights)
        idx = idx[self.part]
        return torch.as_tensor(self.images[idx.numpy()]), self.labels[idx]


class LoaderSampler:
    """A `training.Sampler` that hands out the batches of steps start, start + 1, ... < stop,
    read ahead by `workers` DataLoader processes (0: in this process)."""

    def __init__(self, images, labels, rounds: np.ndarray, new_data_weight: float, *,
                 seed: int, batch_size: int, part: slice, start: int, stop: int,
                 workers: int = 0, pin_memory: bool = False):  # fmt: skip
        weights = newest_round_weights(rounds, new_data_weight)  # as pool_sampler's
        dataset = StepBatches(images, labels, weights, seed, batch_size, part)
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,  # an item is already a batch
            sampler=range(start, stop),
            num_workers=workers,
            pin_memory=pin_memory,
            prefetch_factor=2 if workers else None,
        )
        self._batches = iter(self.loader)

    def __call__(self, generator: torch.Generator, batch_size: int, part: slice) -> Batch:
        """The next step's batch (the trainer's RNG is not used: the step keys the batch)."""
        return next(self._batches)
