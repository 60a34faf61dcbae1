"""The compute ledger: what a run spent, in counts that do not depend on the machine.

Every metrics row of a practice run carries the ledger so far (`practice.LEDGER`):

    denoiser_evals        denoiser forward passes, per image (CFG counts two; a guided step shares one)
    guidance_backward     learner backward passes of entropy guidance, per image and guided step
    guidance_skipped      guidance gradients that were non-finite and zeroed
    images_generated      images sampled into the run's pool (prune: candidates included)
    learner_eval_images   learner forward passes on real val / test images
    learner_score_images  learner forward passes scoring generated images (entropy at generation)
    seconds_generate      wall seconds sampling, guidance included
    seconds_guidance      of which in the guidance hook (gradient and update)
    seconds_train         wall seconds in optimiser steps
    seconds_eval          wall seconds evaluating

plus `learner_images` (optimiser steps x batch: the training images seen) and
`images_discarded` (candidates sampled and scored but not kept: `practice.oversample` rounds and
the prune baseline). A summary adds `generation_compute`.

A round 0 hard-linked from the shared cache (`deliberate.cache`) is still counted: the ledger is
the cost of making the run's pool, the same with or without the cache, so runs stay comparable
and their metrics identical. What this run did not spend is beside it, in the summary's
`round0_cache` (`reused_images`, `denoiser_evals_reused`).

`generation_compute` is the cost of making the training pool, in denoiser-evaluation
equivalents (Fig. 5d's x-axis). A guided step runs the conditional half of its CFG pass with
gradients (no extra evaluation; one extra gradient-free one when `guidance.through_denoiser` is
false), back-propagates through it (about 2 forward passes, the usual backward ≈ 2 x forward
rule; 0 when `guidance.through_denoiser` is false) and runs the learner
forward and backward on x̂0 (about 3 learner forwards). Scoring an image is one learner forward.
A learner forward costs `learner_cost` denoiser evaluations: the ratio of their FLOPs, measured
once per run with torch's FlopCounterMode (`flop_ratio`).
"""

from __future__ import annotations

import torch

# Keys practice.py increments; `add` tolerates ledgers saved before a key existed.
COUNTS = ("denoiser_evals", "guidance_backward", "guidance_skipped", "images_generated",
          "learner_eval_images", "learner_score_images")  # fmt: skip
SECONDS = ("seconds_generate", "seconds_guidance", "seconds_train", "seconds_eval")
DENOISER_BACKWARD = 2.0  # a backward pass through the denoiser, in denoiser forward passes
LEARNER_FWD_BWD = 3.0  # a learner forward + backward, in learner forward passes


def add(ledger: dict, **increments: float) -> dict:
    """Add to ledger entries, starting absent ones (older checkpoints) at 0."""
    for key, value in increments.items():
        ledger[key] = ledger.get(key, 0) + value
    return ledger


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flop_ratio(backend, learner) -> float:
    """FLOPs of one learner forward over one denoiser evaluation, for a single image."""
    c, h, w = backend.image_shape
    x = torch.zeros(1, *backend.latent_shape, device=backend.device)
    t = torch.zeros(1, dtype=torch.long, device=backend.device)
    cond = backend.cond(torch.zeros(1, dtype=torch.long, device=backend.device))
    denoiser = _flops(lambda: backend.model_output(x, t, cond))
    device = next(learner.parameters()).device
    image = torch.zeros(1, c, h, w, device=device)
    return _flops(lambda: learner(image)) / max(denoiser, 1)


def generation_compute(ledger: dict, learner_cost: float, through_denoiser: bool = True) -> float:
    """Denoiser-evaluation equivalents spent making the pool (module docstring)."""
    backward = ledger.get("guidance_backward", 0)
    per_guided = (DENOISER_BACKWARD if through_denoiser else 0.0) + LEARNER_FWD_BWD * learner_cost
    return float(
        ledger.get("denoiser_evals", 0)
        + backward * per_guided
        + ledger.get("learner_score_images", 0) * learner_cost
    )


def ledger_of(row: dict) -> dict:
    """The ledger entries of a metrics row (or summary), absent ones as 0."""
    keys = (*COUNTS, *SECONDS, "learner_images", "images_discarded")
    return {k: row.get(k, 0) or 0 for k in keys}


def combine(*ledgers: dict) -> dict:
    """The sum of several ledgers (a prune run: scorer + candidates + final learner)."""
    total: dict = {}
    for ledger in ledgers:
        add(total, **ledger_of(ledger))
    return total
