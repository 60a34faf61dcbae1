"""benchmarks/scale_sim.py --quick: the scale simulation's every path (build through the Pool API,
open and RSS children, the inline and DataLoader samplers, append and stage + commit) on tiny
pools, so the benchmark keeps running as the pool changes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deliberate.data.shards import MAX_MAPS

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # a handful of subprocesses: 10-25 s on the loaded 2-core machine


def test_quick_run_prints_every_table_with_sane_numbers(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scale_sim.py"), "--quick", "--dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| pool | images | shards |" in proc.stdout
    assert "| sampler | pool | images/s |" in proc.stdout
    assert "| pool size before | one `append` shard s |" in proc.stdout
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("read_big", "read_small"):
        assert len(res[key]) == 7 and all(r["img_s"] > 0 for r in res[key])
    assert all(r["fds"] <= MAX_MAPS + 16 for r in res["read_small"])  # a map holds a descriptor
    for key in ("append_tenth", "append_big"):  # one plain round and one staged round each
        assert res[key]["after"] == res[key]["size"] + 2 * res["args"]["round"]
    assert res["open_big"]["open_s"] > 0 and res["open_big"]["VmHWM"] >= res["baseline"]["VmHWM"] - 5
    assert not list(tmp_path.iterdir())  # the temp pools are gone
