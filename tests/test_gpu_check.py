"""benchmarks/gpu_check.py --tiny: every path of the GPU check (plain and guided sampling in both
dtypes, the bare and the library training step, the checkpoint write, the budget's skip) on CPU."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # one subprocess run: about 35 s on the loaded 2-core machine


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One --tiny run with two batch sizes and no budget: the first batch size runs (it always
    does), the second is skipped. (stdout, the JSON line, the --out file's JSON)."""
    out = tmp_path_factory.mktemp("gpu_check") / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu",
           "--batches", "2,4", "--budget", "0", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout
    return proc.stdout, json.loads(lines[0]), json.loads(out.read_text())


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_prints_the_tables_for_benchmarks_md(tiny_run):
    stdout, _, _ = tiny_run
    assert (
        "| dtype (float32 on the CPU) | batch | plain img/s | guided img/s | guided/plain |"
        in stdout
    )
    assert "| learner training (small_resnet) | dtype | batch | img/s | peak GiB |" in stdout
    assert "| checkpoint (model + EMA + AdamW moments) | bytes | write s | MB/s |" in stdout
    assert "Skipped: sampling: batch sizes 4 skipped" in stdout


def test_the_json_line_holds_every_number(tiny_run):
    _, res, written = tiny_run
    assert written == res  # --out writes the printed line
    assert res["device"] == "CPU" and res["tiny"] is True
    assert [(r["dtype"], r["run_dtype"], r["batch"]) for r in res["sampling"]] == [
        ("float16", "float32", 2), ("bfloat16", "float32", 2)]  # fmt: skip
    for r in res["sampling"]:
        for key in ("plain_img_s", "guided_img_s", "guided_over_plain"):
            assert positive(r[key]), (key, r)
        assert r["plain_peak_gib"] is None  # no GPU memory to report on the CPU
    assert [r["dtype"] for r in res["training"]] == ["float32", "float32"]
    assert "not the library's Trainer" in res["training"][0]["what"]
    assert "Trainer.step" in res["training"][1]["what"]
    assert all(positive(r["img_s"]) for r in res["training"])
    ckpt = res["checkpoint"]
    assert all(positive(ckpt[k]) for k in ("bytes", "write_s", "mb_s", "params"))
    # model + EMA + two AdamW moments: at least four float32 copies of the parameters
    assert ckpt["bytes"] >= 4 * 4 * ckpt["params"]
    assert set(res["section_s"]) == {"sampling", "training", "checkpoint"}
    assert res["skipped"] == ["sampling: batch sizes 4 skipped (0 s budget)"]
