"""Sweeps run, resume and report; the shifted suite is deterministic; `deliberate report` plots."""

import json
import re
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from deliberate.cli import main
from deliberate.data.fashion_mnist import load_eval_split
from deliberate.data.shifted import SHIFTS, shift_images, shifted_suite
from deliberate.errors import DeliberateError
from deliberate.report.compare import scaling_lines
from deliberate.sweep import expand, load_spec
from tests.helpers import CONFIGS, TINY_RUN, benchmark_module, needs_data

PLOTS = ("scaling.png", "compute.png", "omega.png", "curves.png", "hardness.png",
         "hardness-stages.png", "shifted.png")  # fmt: skip


def tiny_sets(gen_path):
    return [f"--set={s}" for s in [*TINY_RUN, f"generator.path={gen_path}"]]


def write_spec(path, **spec):
    path.write_text(yaml.safe_dump({"base": str(CONFIGS / "tiny.yaml"), **spec}))
    return path


def test_sweep_expands_grid_points_seeds_and_vars(tmp_path):
    spec = write_spec(
        tmp_path / "s.yaml",
        vars={"budget": 300},
        set={"practice.max_images": "{budget}", "prune.scorer_dir": "{out}/scorer-{seed}"},
        grid={"guidance.omega": [0.0, 0.02], "size": [{"name": "big", "learner.iterations": 9}]},
        points=[{"name": "static", "set": {"practice.initial": "{budget}"}}],
        seeds=[3, 4],
    )
    pts = expand(load_spec(spec), tmp_path / "out", ["budget=500", "threads=1"])
    assert [p.folder for p in pts] == [
        "omega0.0_big-s3", "omega0.02_big-s3", "static-s3",
        "omega0.0_big-s4", "omega0.02_big-s4", "static-s4",
    ]  # fmt: skip
    static = pts[2].overrides
    assert "practice.initial=500" in static and "practice.max_images=500" in static
    assert f'prune.scorer_dir="{tmp_path}/out/scorer-3"' in static
    assert static[-2:] == ["threads=1", "seed=3"]  # command line after the point, seed last
    with pytest.raises(DeliberateError, match="repeat"):
        expand({"points": [{"name": "a"}, {"name": "a"}]}, tmp_path)
    with pytest.raises(DeliberateError, match="grid axis 'size'"):
        expand({"grid": {"size": [1, 2]}}, tmp_path)


def test_shifts_are_deterministic_and_change_the_images():
    split = None if needs_data.args[0] else load_eval_split()
    rng = np.random.default_rng(0)
    images = split.test_images[:60] if split else rng.integers(0, 256, (60, 28, 28), np.uint8)
    for name in SHIFTS:
        a, b = shift_images(images, name), shift_images(images, name)
        assert a.dtype == np.uint8 and a.shape == images.shape
        assert np.array_equal(a, b), name  # deterministic, the noise included
        assert np.abs(a.astype(int) - images).mean() > 2, name  # and actually different
    labels = np.arange(60) % 10
    parts = list(shifted_suite(images, labels))
    assert [n for n, _, _ in parts] == list(SHIFTS)
    assert sum(len(y) for _, _, y in parts) == 60  # every test image in exactly one shift
    assert np.array_equal(parts[1][2], labels[1::6])


@needs_data
def test_sweep_runs_resumes_and_reports(tmp_path, generator, capsys):
    spec = write_spec(tmp_path / "omega.yaml", title="tiny omega", kind="practice",
                      set={"practice.branch_outs": True},
                      grid={"guidance.omega": [0.0, 0.02]}, seeds=[0])  # fmt: skip
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec), "--out", str(out), "--quiet", *tiny_sets(generator)]) == 0
    first = capsys.readouterr().out
    assert first.count(": running") == 2
    points = json.loads((out / "sweep.json").read_text())["points"]
    assert [p["dir"] for p in points] == ["omega0.0-s0", "omega0.02-s0"]
    summary = json.loads((out / "omega0.02-s0" / "summary.json").read_text())
    assert summary["rounds"] >= 1 and set(summary["shifted"]) == {*SHIFTS, "mean"}
    errors = summary["round_errors"]
    assert errors[0]["error_when_added"] is None and errors[1]["error_when_added"] is not None
    for e in errors[1:]:  # the plateau learner saved at the fork is the one that asked (Fig. 6)
        assert e["error_by_stage"][str(e["round"] - 1)] == e["error_when_added"]
    assert summary["generation_compute"] > summary["denoiser_evals"]  # guidance costs extra
    assert summary["images_generated"] == summary["pool_size"]
    assert summary["learner_score_images"] == summary["pool_size"] - 40
    # Again: both points are finished, so nothing runs; the report is rebuilt.
    assert main(["sweep", str(spec), "--out", str(out), "--quiet", *tiny_sets(generator)]) == 0
    assert capsys.readouterr().out.count("skipped") == 2
    # A changed config aimed at a finished point is refused in one line.
    code = main(["sweep", str(spec), "--out", str(out), "--quiet", *tiny_sets(generator),
                 "--set", "learner.lr=0.02"])  # fmt: skip
    assert code == 2 and "different config (learner.lr" in capsys.readouterr().err

    report = tmp_path / "report"
    static = out / "omega0.0-s0"  # a run folder works too; named twice, it counts once
    assert main(["report", str(out), str(static), "--out", str(report)]) == 0
    for name in PLOTS:
        with Image.open(report / name) as im:
            assert im.size[0] > 400 and im.size[1] > 300, name
    md = (report / "report.md").read_text()
    assert "| DP ω=0, fixed T=1 | 1 |" in md and "| DP ω=0.02, fixed T=1 | 1 |" in md
    assert all(f"![{name}]({name})" in md for name in PLOTS)
    assert "plain vs guided" in md
    # Pool quality against the real test images, per setting and per DP round (cached per run)
    assert "## Pool quality" in md  # a row per setting and pool size
    assert re.search(r"\| DP ω=0.02, fixed T=1, [\d,]+ images \| 1 \|", md.split("## Pool quality")[1])
    quality = json.loads((out / "omega0.02-s0" / "quality.json").read_text())
    assert set(quality["rounds"]) == {str(k) for k in range(summary["rounds"] + 1)}
    assert len(quality["per_class_test_acc"]) == 10
    q = quality["pool"]
    assert 0 < q["fidelity"] <= 1 and q["fd"] > 0
    assert all(0 <= q[k] <= 1 for k in ("precision", "recall", "coverage")) and q["density"] >= 0
    assert main(["report", str(tmp_path / "nothing"), "--out", str(report)]) == 2

    # The runs' small records, archived (benchmarks/archive_runs.py), give the same tables
    # without their pools: what BENCHMARKS.md's numbers are recomputed from on another machine.
    archive = benchmark_module("archive_runs")
    kept = tmp_path / "kept"
    assert archive.main([str(out), "--into", str(kept)]) == 0
    assert sorted(f.name for f in (kept / "omega0.02-s0").iterdir()) == sorted(archive.FILES)
    assert not list(kept.rglob("*.npz")) and main(["report", *map(str, kept.iterdir()), "--out",
                                                   str(tmp_path / "r2")]) == 0  # fmt: skip
    md2 = (tmp_path / "r2" / "report.md").read_text()
    for section in ("## Pool quality", "| DP ω=0.02, fixed T=1 | 1 |"):
        assert md.split(section)[1][:600] == md2.split(section)[1][:600]
    headline = benchmark_module("headline")  # the same run archived counts once; another result is refused
    assert headline.collect([out, *kept.iterdir()])["DP"] == headline.collect([out])["DP"]
    other = tmp_path / "other" / "omega0.02-s0"
    shutil.copytree(kept / "omega0.02-s0", other)
    s = json.loads((other / "summary.json").read_text())
    (other / "summary.json").write_text(json.dumps({**s, "val_acc": s["val_acc"] / 2}))
    with pytest.raises(SystemExit, match="both give DP .* seed 0, with other results"):
        headline.collect([out, other])
    (kept / "omega0.02-s0" / "summary.json").write_text("{}")  # another run under that name
    assert archive.main([str(out), "--into", str(kept)]) == 2  # refused, nothing overwritten
    assert (kept / "omega0.02-s0" / "summary.json").read_text() == "{}"


SWEEPS = sorted(p.stem for p in CONFIGS.glob("*.yaml") if re.search(r"^kind:", p.read_text(), re.M))


@pytest.mark.parametrize("name", SWEEPS)
def test_shipped_sweeps_expand_to_valid_configs(name, tmp_path):
    from deliberate.config import load_config
    from deliberate.sweep import kind_runner

    assert {"demo", "scaling", "omega", "prune", "ablations", "fair-dp-mid"} <= set(SWEEPS)
    points = expand(load_spec(CONFIGS / f"{name}.yaml"), tmp_path)
    first_five = name in {"demo", "scaling", "omega", "prune", "ablations"}
    assert len(points) >= (3 if first_five else 1) and len({p.folder for p in points}) == len(points)
    for p in points:
        cfg = load_config(kind_runner(p.kind)[0], p.base, p.overrides)  # validates every point
        if name == "demo" and p.name == "static":
            assert cfg.practice.initial == cfg.practice.max_images and cfg.guidance.omega == 0


def test_cost_table_compares_prune_and_dp_at_the_same_pool():
    from deliberate.report.tables import cost_table

    def run(method, label, pool, acc, compute):
        summary = {"pool_size": pool, "test_acc": acc, "generation_compute": compute}
        return {"method": method, "label": label, "summary": summary}

    runs = [run("prune", "prune R=8", 2500, 0.78, 50_000), run("DP", "DP ω=0.02", 2500, 0.80, 10_000),
            run("DP", "DP ω=0.02", 2500, 0.82, 10_000), run("DP", "DP ω=0.1", 1500, 0.7, 9_000)]  # fmt: skip
    table = cost_table(runs)
    assert table[2:] == ["| DP ω=0.02 | prune R=8 | 2500 | +3.00 | 5.00× |"]  # ω=0.1: other pool
    assert cost_table(runs[1:]) == []


def test_scaling_plot_joins_static_sizes_into_one_curve():
    def run(method, label, size, acc, branches=()):
        summary = {"pool_size": size, "images_generated": size, "test_acc": acc,
                   "branches": [{"pool_size": n, "test_acc": a} for n, a in branches]}  # fmt: skip
        return {"method": method, "label": label, "summary": summary}

    runs = [
        run("static", f"static {n:,}", n, a) for n, a in ((500, 0.7), (1000, 0.75), (1000, 0.77))
    ]
    runs += [run("DP", "DP ω=0.04", 1000, 0.8, branches=[(500, 0.72)])]
    lines = scaling_lines(runs)
    assert lines["static"] == ("static", [(500, 0.7), (1000, 0.75), (1000, 0.77)])
    assert lines["DP ω=0.04"] == ("DP", [(1000, 0.8), (500, 0.72)])
    assert len(lines) == 2
