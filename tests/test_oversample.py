"""Prune in the loop (Fig. 5's protocol): a round samples R x P candidates, the learner keeps P."""


import numpy as np
import pytest
import torch

from deliberate.config import to_dict
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError
from deliberate.generators.pixel import load_pixel_backend
from deliberate.practice import run_practice
from deliberate.report.runs import label_of
from deliberate.rounds import ROUND_STRIDE, plan
from deliberate.rundir import load_learner
from deliberate.sampling import sample
from deliberate.selection import score_stored, select_top_entropy
from tests.helpers import needs_data, tiny_config


class _Stop(Exception):
    pass


def _stop_at_round_1(event, info):
    if event == "sample" and info["round"] == 1:
        raise _Stop  # a crash while the first candidates are sampled: nothing of round 1 written


@needs_data
def test_round_keeps_the_deciding_learners_top_entropy_candidates_and_resumes(tmp_path, generator):
    cfg = tiny_config(generator, "practice.oversample=3", "guidance.omega=0.0",
                      "practice.branch_outs=false")  # fmt: skip
    out = tmp_path / "run"
    with pytest.raises(_Stop):
        run_practice(cfg, out, progress=False, callback=_stop_at_round_1)
    assert len(Pool(out / "pool")) == cfg.practice.initial

    # What round 1 must keep: every candidate, scored by the checkpointed (deciding) learner.
    backend = load_pixel_backend(generator)
    learner = load_learner(out, backend)
    n, size = cfg.practice.per_round, cfg.generator.batch_size
    pairs = plan(range(10), -(-3 * n // 10), cfg.seed, ROUND_STRIDE)[: 3 * n]
    entropy = []
    for i in range(0, len(pairs), size):  # the run's batches, so the floats are the run's
        chunk = pairs[i : i + size]
        images = sample(backend, torch.tensor([y for y, _ in chunk]), [s for _, s in chunk],
                        cfg.generator.sampler).images  # fmt: skip
        entropy.append(score_stored(learner, images, "cpu")["entropy"])
    entropy = torch.cat(entropy).numpy()
    labels = np.array([y for y, _ in pairs])
    kept = select_top_entropy(entropy, labels, n, 10)
    expected = {pairs[i][1]: entropy[i] for i in kept}

    summary = run_practice(cfg, out, progress=False)  # resumes: samples the candidates again
    rows = [r for r in Pool(out / "pool").records() if r["round"] == 1]
    assert {r["seed"] for r in rows} == set(expected)
    assert [r["label"] for r in rows].count(0) == n // 10  # class-balanced
    for r in rows:
        assert r["entropy"] == pytest.approx(expected[r["seed"]], abs=1e-6)
        assert r["oversample"] == 3
    dropped = np.setdiff1d(np.arange(len(pairs)), kept)
    for c in range(10):  # within a class, every kept candidate beats every dropped one
        assert (
            entropy[kept][labels[kept] == c].min() >= entropy[dropped][labels[dropped] == c].max()
        )

    added = summary["pool_size"] - cfg.practice.initial
    assert summary["rounds"] >= 1 and added == summary["rounds"] * n
    assert summary["images_generated"] == cfg.practice.initial + 3 * added
    assert summary["images_discarded"] == 2 * added
    method, label = label_of("practice", to_dict(cfg), summary)
    assert (method, label) == ("prune in loop", "prune in loop R=3")


def test_oversample_below_one_is_refused(generator):
    with pytest.raises(DeliberateError, match="practice.oversample"):
        tiny_config(generator, "practice.oversample=0.5")
