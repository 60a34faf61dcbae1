"""`deliberate demo` end to end at a tiny size: three runs, a table, report.md with plots."""

import json
from pathlib import Path

import yaml

from deliberate.cli import main
from tests.helpers import TINY_RUN, needs_data

SIZES = ("practice.initial", "practice.per_round", "practice.max_images")


@needs_data
def test_demo_runs_static_and_both_dp_variants(tmp_path, generator, capsys):
    out = tmp_path / "demo"
    # The pool sizes go through the demo's vars, so the static run still gets the whole budget.
    sets = [s for s in TINY_RUN if not s.startswith(SIZES)]
    sets += ["budget=80", "initial=40", "per_round=20", f"generator.path={generator}"]
    assert main(["demo", "--out", str(out), "--quiet", *(f"--set={s}" for s in sets)]) == 0
    printed = capsys.readouterr().out
    demo = Path(__file__).resolve().parent.parent / "configs" / "fmnist" / "demo.yaml"
    omega = yaml.safe_load(demo.read_text())["vars"]["omega"]
    for label in ("static", "DP ω=0, fixed T=1", f"DP ω={omega:g}, fixed T=1"):
        assert f"\n{label} " in printed, label
    assert "gen. compute" in printed and f"report: {out / 'report.md'}" in printed
    summaries = {d: json.loads((out / d / "summary.json").read_text())
                 for d in ("static-s0", "dp-omega0-s0", "dp-s0")}  # fmt: skip
    assert summaries["static-s0"]["pool_size"] == 80 and summaries["static-s0"]["rounds"] == 0
    assert all(s["iterations"] == 60 for s in summaries.values())  # the matched budget
    assert summaries["dp-s0"]["rounds"] >= 1 and summaries["dp-s0"]["pool_size"] <= 80
    md = (out / "report.md").read_text()
    for name in ("curves.png", "scaling.png", "compute.png", "shifted.png"):
        assert f"![{name}]({name})" in md and (out / name).stat().st_size > 10_000, name
    assert "![plain vs guided](dp-s0/report/plain-vs-guided-round-1.png)" in md
    assert (out / "dp-s0" / "report" / "plain-vs-guided-round-1.png").exists()
