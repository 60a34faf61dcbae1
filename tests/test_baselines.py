"""Oversample-then-prune: class-balanced top-entropy selection, the run, its ledger and plots."""

import json

import numpy as np
import pytest

from deliberate.cli import main
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError
from deliberate.selection import select_top_entropy
from tests.helpers import CONFIGS, TINY_RUN, needs_data


def test_selection_keeps_the_highest_entropy_per_class():
    entropy = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2, 0.4])
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    assert select_top_entropy(entropy, labels, 3, 3).tolist() == [1, 5, 7]
    # 5 = 2 + 2 + 1: the remainder goes to the first classes; the order is by index.
    assert select_top_entropy(entropy, labels, 5, 3).tolist() == [1, 2, 3, 5, 7]
    ties = select_top_entropy(np.zeros(4), np.array([0, 0, 1, 1]), 2, 2)
    assert ties.tolist() == [0, 2]  # ties go to the lower index
    with pytest.raises(DeliberateError, match="class 2 has 2 candidates but needs 3"):
        select_top_entropy(entropy, labels, 9, 3)


@needs_data
def test_prune_run_keeps_top_entropy_counts_discards_and_reports(tmp_path, generator, capsys):
    out = tmp_path / "prune"
    sets = [f"--set={s}" for s in [*TINY_RUN, f"generator.path={generator}", "prune.ratio=3",
                                   "prune.selected=20"]]  # fmt: skip
    assert main(["prune", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet", *sets]) == 0
    assert "kept 20 of 60 candidates (R = 3)" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    assert (s["kind"], s["pool_size"], s["candidates"]) == ("prune", 60, 60)
    assert s["images_generated"] == 40 + 60 and s["images_discarded"] == 40
    assert s["learner_score_images"] == 60 and s["guidance_backward"] == 0
    assert s["denoiser_evals"] == (40 + 60) * 3 * 2  # 3 steps, CFG: two evaluations each
    assert s["generation_compute"] == pytest.approx(s["denoiser_evals"] + 60 * s["learner_cost"])
    assert s["learner_images"] == 2 * 60 * 16  # scorer + final learner, 60 steps of 16 each

    cands = Pool(out / "candidates").records()
    kept = Pool(out / "train" / "pool").records()
    scorer = Pool(out / "scorer" / "pool").records()
    assert [r["seed"] for r in kept[:40]] == [r["seed"] for r in scorer]  # D_0 comes first
    d0 = Pool(out / "scorer" / "pool").load_all()[0]
    assert np.array_equal(Pool(out / "train" / "pool").get(range(40))[0], d0)  # same pixels
    chosen = {r["candidate_id"] for r in kept[40:]}
    assert len(chosen) == 20 and [r["round"] for r in kept[40:]] == [1] * 20
    for c in range(10):
        mine = [r for r in cands if r["label"] == c]
        top = sorted(mine, key=lambda r: -r["entropy"])[:2]
        assert {r["id"] for r in top} == {i for i in chosen if cands[i]["label"] == c}
    assert s["mean_entropy_kept"] > s["mean_entropy_candidates"]

    # Resuming a finished run changes nothing; the report draws the prune and compute plots.
    assert main(["prune", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet", *sets]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert {k: v for k, v in again.items() if not k.startswith("seconds")} == {
        k: v for k, v in s.items() if not k.startswith("seconds")
    }
    assert main(["report", str(out), str(out / "scorer"), "--out", str(tmp_path / "r")]) == 0
    for name in ("prune.png", "compute.png", "scaling.png", "hardness.png"):
        assert (tmp_path / "r" / name).stat().st_size > 10_000, name
    assert "| prune R=3 | 1 | 60 | 100 | 40 |" in (tmp_path / "r" / "report.md").read_text()
