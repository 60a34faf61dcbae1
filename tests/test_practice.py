"""The Deliberate Practice loop: patience, guided rounds, resume, refusal, branch-outs, presets."""

import json

import numpy as np
import pytest
import torch

from deliberate.cli import main
from deliberate.config import load_config
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError
from deliberate.guidance import GuidanceSettings, learner_fingerprint
from deliberate.learner import build_learner, to_float01
from deliberate.practice import LoopState, PracticeConfig, decide, patience_limit, run_practice
from tests.helpers import CONFIGS, TIMING_KEYS, needs_data, tiny_config, tiny_overrides


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, generator):
    """tiny.yaml run once, uninterrupted, with branch-outs: the reference for several tests."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    summary = run_practice(tiny_config(generator), out, progress=False)
    return out, summary


def simulate(cfg: PracticeConfig, script: list[tuple[int, float]]) -> list[int]:
    """Feed (iteration, val accuracy) pairs to `decide`; return the iterations that add a round."""
    state = LoopState(round=0, pending=False, pool_size=cfg.practice.initial)
    added = []
    for step, acc in script:
        if decide(cfg, state, acc, step):  # what _Run.generate_round then does to the state
            added.append(step)
            state.round += 1
            state.pool_size = min(state.pool_size + cfg.practice.per_round, cfg.practice.max_images)
            state.patience = 0
    return added


def patience_config(**practice) -> PracticeConfig:
    # iterations 1000: warm-up ends at 100, cool-down starts at 800.
    data = {"learner": {"iterations": 1000}, "practice": {"initial": 100, "per_round": 100,
            "max_images": 400, "eval_every": 40, **practice}}  # fmt: skip
    return load_config(PracticeConfig, None, [f"{k}={json.dumps(v)}" for k, v in _flat(data)])


def _flat(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_fixed_patience_waits_for_warmup_stops_at_budget_and_cooldown():
    cfg = patience_config(patience=1, patience_mode="fixed")
    # 40: new best; 80: plateau but still in warm-up; 120: plateau after warm-up -> round 1.
    script = [(40, 0.5), (80, 0.5), (120, 0.5), (160, 0.6), (200, 0.7), (240, 0.65)]
    assert simulate(cfg, script) == [120, 240]
    cfg = patience_config(patience=2, patience_mode="fixed")
    flat = [(s, 0.5) for s in range(40, 1001, 40)]  # never improves after the first evaluation
    assert simulate(cfg, flat) == [120, 200, 280]  # every 2nd eval, until the 400-image budget
    late = [(s, 0.5) for s in range(760, 1001, 40)]  # plateau reached only near the end
    assert simulate(cfg, late) == []  # 840 would be due, but cool-down starts at 800
    static = patience_config(patience=1, per_round=0, initial=400)
    assert simulate(static, flat) == []


def test_incremental_patience_grows_with_the_pool():
    cfg = patience_config(patience=1, patience_mode="incremental")
    assert [patience_limit(cfg.practice, n) for n in (100, 150, 200, 300, 301)] == [1, 2, 2, 3, 4]
    flat = [(s, 0.5) for s in range(40, 1001, 40)]
    # T_max,k = 1, 2, 3 as the pool holds 100, 200, 300 images.
    assert simulate(cfg, flat) == [120, 200, 320]
    # A new best resets the counter: the improvement at 160 postpones round 2.
    script = [(40, 0.5), (80, 0.5), (120, 0.5), (160, 0.6), (200, 0.6), (240, 0.6)]
    assert simulate(cfg, script) == [120, 240]


@needs_data
def test_tiny_run_end_to_end(tiny_run):
    out, summary = tiny_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["pool_size"] == 200 and summary["rounds"] == 2
    assert [r["iteration"] for r in rows] == list(range(10, 151, 10))
    assert sum(r["adds_round"] for r in rows) == 2
    assert rows[-1]["test_acc"] == summary["test_acc"] is not None
    assert all(r["test_acc"] is None for r in rows[:-1])  # test_every: 0
    # CFG doubles every step; a guided step shares its conditional forward (no extra evaluation)
    assert rows[-1]["denoiser_evals"] == 100 * 5 * 2 + 2 * 50 * 5 * 2
    assert rows[-1]["guidance_backward"] == 2 * 50 * 2  # 2 guided steps of 5 (every 2, 80 %)
    assert rows[-1]["learner_images"] == 150 * 32
    assert summary["guidance_precision"] == "fp32"  # tiny.yaml's, the default
    for name in ("curves.png", "entropy.png", "plain-vs-guided-round-1.png", "report.md",
                 *(f"samples-round-{k}.png" for k in range(3))):  # fmt: skip
        assert (out / "report" / name).stat().st_size > 0, name
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["loop"]["round"] == 2 and ckpt["trainer"]["step"] == 150


@needs_data
def test_guided_rounds_record_entropy_and_fingerprint(tiny_run):
    out, _ = tiny_run
    pool = Pool(out / "pool")
    records = pool.records()
    plain = [r for r in records if r["round"] == 0]
    assert len(plain) == 100 and all(r["omega"] == 0 and "fingerprint" not in r for r in plain)
    assert np.bincount([r["label"] for r in plain]).tolist() == [10] * 10
    for k in (1, 2):
        rows = [r for r in records if r["round"] == k]
        assert len(rows) == 50 and all(r["omega"] == 0.02 for r in rows)
        assert len({r["fingerprint"] for r in rows}) == 1
    # Round 2 was guided by the EMA weights saved in the round-1 fork (taken just before it).
    fork = torch.load(out / "branches" / "round-1" / "fork.pt", weights_only=True)
    learner = build_learner("small_resnet", 10, 1, 28, input_size=14)
    learner.load_state_dict(fork["trainer"]["ema"])
    learner.eval()
    rows = [r for r in records if r["round"] == 2]
    assert rows[0]["fingerprint"] == learner_fingerprint(learner)
    images, _ = pool.get([r["id"] for r in rows])
    with torch.no_grad():
        again = learner.entropy(to_float01(images)).numpy()
    assert np.allclose(again, [r["entropy"] for r in rows], atol=1e-5)


@needs_data
def test_guided_rounds_are_harder_than_their_plain_twins(tiny_run):
    """Each round keeps plain twins (same seeds, omega = 0) scored by the guiding learner."""
    out, summary = tiny_run
    pool = Pool(out / "pool")
    for k in (1, 2):
        with np.load(out / "twins" / f"round-{k}.npz") as t:
            rows = {r["seed"]: r for r in pool.records() if r["round"] == k}
            assert np.bincount(t["labels"]).tolist() == [5] * 10  # a round of 50: 5 per class
            assert [rows[s]["label"] for s in t["seeds"]] == t["labels"].tolist()
            assert not np.array_equal(t["plain"], t["guided"])
            assert t["entropy_guided"].mean() > t["entropy_plain"].mean()
        plain, guided = summary["twin_entropy"][k]
        assert guided > plain
        assert (out / "report" / f"plain-vs-guided-round-{k}.png").stat().st_size > 10_000


@needs_data
def test_generate_with_a_saved_learner_guides_any_batch(tiny_run, generator, tmp_path, capsys):
    """`deliberate generate --learner RUN_DIR` guides by the run's final EMA learner."""
    out, _ = tiny_run
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    learner = build_learner("small_resnet", 10, 1, 28, input_size=14)
    learner.load_state_dict(ckpt["trainer"]["ema"])
    common = ["generate", "--per-class", "2", "--steps", "5", "--generator", generator, "--quiet"]
    pools = {}
    for name, extra in {"plain": [], "zero": ["--omega", "0"], "guided": ["--omega", "0.05"],
                        "default": []}.items():  # fmt: skip
        learner_args = [] if name == "plain" else ["--learner", str(out)]
        assert main([*common, "--out", str(tmp_path / name), *learner_args, *extra]) == 0
        pools[name] = Pool(tmp_path / name)
    plain, _ = pools["plain"].load_all()
    assert np.array_equal(pools["zero"].load_all()[0], plain)  # omega 0 is plain sampling
    rows = pools["guided"].records()
    assert {r["fingerprint"] for r in rows} == {learner_fingerprint(learner)}
    assert all(r["omega"] == 0.05 for r in rows)
    assert {r["omega"] for r in pools["default"].records()} == {GuidanceSettings().omega}
    with torch.no_grad():
        h_plain = learner.entropy(to_float01(plain)).mean()
    assert np.mean([r["entropy"] for r in rows]) > h_plain
    # Bad uses answer in one line.
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "x"), "--omega", "0.1"]) == 2
    assert "--omega and --criterion need --learner" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "x"), "--learner", str(tmp_path)]) == 2
    assert "no checkpoint.pt there" in capsys.readouterr().err


@needs_data
def test_branch_outs_add_scaling_points(tiny_run):
    out, summary = tiny_run
    assert [(b["round"], b["pool_size"]) for b in summary["branches"]] == [(0, 100), (1, 150)]
    for b in summary["branches"]:
        rows = [json.loads(x) for x in (out / "branches" / f"round-{b['round']}" / "metrics.jsonl")
                .read_text().splitlines()]  # fmt: skip
        assert rows[0]["iteration"] == b["forked_at"] + 10 and rows[-1]["iteration"] == 150
        assert {r["pool_size"] for r in rows} == {b["pool_size"]} and not any(
            r["adds_round"] for r in rows
        )
        assert 0 <= b["test_acc"] <= 1


@needs_data
def test_interrupted_run_resumes_to_the_identical_result(tiny_run, generator, tmp_path):
    ref, ref_summary = tiny_run
    out = tmp_path / "resumed"
    stops = [
        lambda e, i: e == "sample" and i["round"] == 1 and i["seeds"][0] % 50 == 25,  # mid-round
        lambda e, i: e == "eval" and i["run"] == "train" and i["iteration"] == 130,  # after a row
        lambda e, i: e == "eval" and i["run"] == "branch 1" and i["iteration"] == 140,  # in a fork
    ]
    for stop in stops:

        def crash(event, info, stop=stop):
            if stop(event, info):
                raise RuntimeError("simulated crash")

        with pytest.raises(RuntimeError, match="simulated crash"):
            run_practice(tiny_config(generator), out, progress=False, callback=crash)
    summary = run_practice(tiny_config(generator), out, progress=False)
    strip = lambda d: {k: v for k, v in d.items() if k not in TIMING_KEYS}  # noqa: E731
    assert strip(summary) == strip(ref_summary)
    a, b = Pool(ref / "pool"), Pool(out / "pool")
    assert a.records() == b.records()  # ids, labels, seeds, rounds, entropies, fingerprints
    assert np.array_equal(a.load_all()[0], b.load_all()[0])
    for sub in ("", "branches/round-0/", "branches/round-1/"):
        ra, rb = ((d / sub / "metrics.jsonl").read_text().splitlines() for d in (ref, out))
        assert [strip(json.loads(x)) for x in ra] == [strip(json.loads(x)) for x in rb], sub


@needs_data
def test_a_different_config_is_refused_in_one_line(tiny_run, generator, capsys):
    out, _ = tiny_run
    sets = [f"--set={s}" for s in tiny_overrides(generator)]
    code = main(["run", str(CONFIGS / "tiny.yaml"), "--out", str(out), *sets, "--quiet",
                 "--set", "practice.patience=3"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "different config (practice.patience: 1 there, 3 here)" in err
    # The same command again is a no-op resume that re-prints the result.
    assert main(["run", "--out", str(out), "--quiet"]) == 0
    assert "pool 200 images" in capsys.readouterr().out


def test_presets_load_and_static_matches_the_dp_budget():
    dp = load_config(PracticeConfig, CONFIGS / "dp.yaml")
    static = load_config(PracticeConfig, CONFIGS / "static.yaml")
    tiny = load_config(PracticeConfig, CONFIGS / "tiny.yaml")
    # generate --learner guides as a DP round does
    assert dp.guidance == GuidanceSettings(precision="auto") and tiny.practice.per_round > 0
    assert static.practice.per_round == 0 and static.guidance.omega == 0
    assert static.practice.initial == static.practice.max_images == dp.practice.max_images
    assert static.learner == dp.learner and static.generator == dp.generator
    assert dp.pool.codec == static.pool.codec == tiny.pool.codec == "raw"  # 28² grey: raw
    with pytest.raises(DeliberateError, match="max_images=50 is below initial=100"):
        load_config(PracticeConfig, CONFIGS / "tiny.yaml", ["practice.max_images=50"])
