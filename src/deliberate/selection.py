"""Scoring images by a learner, and keeping the highest-entropy ones (SPEC §4, Fig. 5).

Used by DP's rounds (the entropy each new image has for the learner that asked for it), by
`deliberate generate --learner`, and by the two oversample-then-prune protocols: the separate
baseline of `deliberate.baselines` and the in-loop one of `practice.oversample`.
"""

from __future__ import annotations

import numpy as np
import torch

from deliberate.errors import DeliberateError
from deliberate.generators.base import to_uint8
from deliberate.learner import predictive_entropy, to_float01


def score_stored(learner, images01: torch.Tensor, device, codec=None) -> dict[str, torch.Tensor]:
    """The learner's entropy and prediction on images exactly as the pool gives them back.

    Scoring the rounded pixels, not the sampler's floats, makes the recorded entropy the one a
    later reader of the pool measures; with a lossy `codec` (the pool's PoolSettings) the pixels
    are encoded and decoded first, as the pool will store them. Returns CPU tensors
    {"entropy", "learner_pred"}.
    """
    stored = to_uint8(images01.detach().cpu())
    if codec is not None and codec.lossy:  # score what the learner will train on
        stored = torch.from_numpy(codec.roundtrip(stored.numpy()))
    stored = to_float01(stored).to(device)
    with torch.no_grad():
        logits = learner(stored)
    return {"entropy": predictive_entropy(logits).cpu(), "learner_pred": logits.argmax(-1).cpu()}


def select_top_entropy(
    entropy: np.ndarray, labels: np.ndarray, keep: int, num_classes: int
) -> np.ndarray:
    """Indices of the `keep` highest-entropy items, as equal per class as `keep` allows.

    Each class gets keep // num_classes (the first keep % num_classes classes one more); within
    a class, ties go to the lower index. Returns indices in increasing order.
    """
    entropy, labels = np.asarray(entropy, float), np.asarray(labels)
    quota = [keep // num_classes + (c < keep % num_classes) for c in range(num_classes)]
    chosen = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < quota[c]:
            raise DeliberateError(
                f"prune: class {c} has {len(idx)} candidates but needs {quota[c]}; raise ratio"
            )
        order = np.argsort(-entropy[idx], kind="stable")  # descending, stable on ties
        chosen.append(idx[order[: quota[c]]])
    return np.sort(np.concatenate(chosen))
