"""Budget branches and prefix learners (docs/experiments.md, the compute-fair protocol).

One run with `learner.budgets` cools each shorter budget down from its stable phase; a static run
with `practice.prefixes` also trains learners on D_0's first n images. Both must equal the
separate runs they stand for, metrics row for row.
"""

import json

import pytest

from deliberate.errors import DeliberateError
from deliberate.practice import run_practice
from deliberate.training import TrainConfig, wsd_lr
from tests.helpers import needs_data, tiny_config

KEYS = ("iteration", "pool_size", "round", "val_acc", "train_loss", "lr", "phase")


def rows(path):
    return [{k: r[k] for k in KEYS} for r in map(json.loads, path.read_text().splitlines())]


def test_shared_warmup_schedule_is_one_trajectory_until_cooldown():
    long = TrainConfig(iterations=800, warmup_steps=10)
    short = TrainConfig(iterations=100)  # warm-up round(0.1 * 100) = 10
    assert [long.lr_factor(s) for s in range(80)] == [short.lr_factor(s) for s in range(80)]
    assert short.cooldown_start == 80 and short.phase(80) == "cooldown"
    assert long.lr_factor(80) == 1.0 > short.lr_factor(81)
    assert TrainConfig(iterations=100).lr_factor(5) == wsd_lr(5, 100, 1.0)
    with pytest.raises(DeliberateError, match="warmup_steps"):
        TrainConfig(iterations=100, warmup_steps=90)


@needs_data
def test_budget_branch_equals_a_separate_short_run(tmp_path, generator):
    common = ["practice.branch_outs=false"]
    trunk = tiny_config(generator, *common, "learner.iterations=300", "learner.budgets=[150]")
    summary = run_practice(trunk, tmp_path / "trunk", progress=False)
    alone = run_practice(tiny_config(generator, *common), tmp_path / "alone", progress=False)
    branch = tmp_path / "trunk" / "budgets" / "iters-150"
    trunk_rows = rows(tmp_path / "trunk" / "metrics.jsonl")
    alone_rows = rows(tmp_path / "alone" / "metrics.jsonl")
    cut = next(i for i, r in enumerate(alone_rows) if r["iteration"] >= 120)  # cool-down start
    assert trunk_rows[:cut] == alone_rows[:cut]  # one trajectory through the stable phase
    assert rows(branch / "metrics.jsonl") == alone_rows[cut:]
    short, full = summary["budgets"]
    assert short == {"iterations": 150, "pool_size": alone["pool_size"],
                     "val_acc": alone["val_acc"], "test_acc": alone["test_acc"]}  # fmt: skip
    assert full["iterations"] == 300 and full["test_acc"] == summary["test_acc"]


@needs_data
def test_prefix_learner_equals_a_separate_static_run(tmp_path, generator):
    static = ["practice.per_round=0", "practice.branch_outs=false"]
    big = tiny_config(generator, *static, "practice.initial=200", "practice.max_images=200",
                      "practice.prefixes=[100]", "learner.budgets=[100]")  # fmt: skip
    summary = run_practice(big, tmp_path / "big", progress=False)
    small = tiny_config(generator, *static, "practice.initial=100", "practice.max_images=100",
                        "learner.budgets=[100]")  # fmt: skip
    alone = run_practice(small, tmp_path / "small", progress=False)
    (prefix,) = summary["prefixes"]
    assert prefix["pool_size"] == 100 and prefix["budgets"] == alone["budgets"]
    assert rows(tmp_path / "big" / "prefixes" / "n-100" / "metrics.jsonl") == rows(
        tmp_path / "small" / "metrics.jsonl"
    )
    # a re-run resumes: every result is cached and nothing changes
    assert run_practice(big, tmp_path / "big", progress=False)["prefixes"] == summary["prefixes"]


def test_budget_and_prefix_settings_are_checked(generator):
    cases = {
        ("learner.budgets=[150]",): "learner.budgets: 150 must be in",
        ("learner.budgets=[100]", "practice.branch_outs=true"): "cannot be combined",
        ("practice.prefixes=[50]",): "practice.prefixes is for static runs",
        ("practice.per_round=0", "practice.prefixes=[100]"): r"practice.prefixes \[100\]",
    }
    for sets, message in cases.items():
        with pytest.raises(DeliberateError, match=message):
            tiny_config(generator, *sets)
