"""Behaviour pinned across refactors: the pool bytes and metrics of two reference commands.

`configs/fmnist/tiny.yaml` (1 thread) and `deliberate generate --per-class 10 --seed 11`, both with
the shipped generator: sha256 of the pool's images and labels (as exported to npz) and every
metrics row without its wall-clock seconds must equal `tests/data/same-results.json`, recorded
before the layout of issue 12 was changed. Float results depend on the CPU too (oneDNN picks
kernels and blockings by model and instruction set: the Xeon and the EPYC VMs of this project
differ in the first training loss at the 5th digit and in the pools' bytes), so the file holds
one record per machine (`machine()`); on a machine without one the test skips and says so.
Record this machine's, or re-record after an intended change in results:

    python -m tests.test_same_results --record
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from deliberate.cli import main
from deliberate.data.export import export_npz
from deliberate.data.pool import Pool
from tests.helpers import machine, needs_data

REFERENCE = Path(__file__).parent / "data" / "same-results.json"
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "fmnist" / "tiny.yaml"


def pool_hashes(pool_dir: Path, out: Path) -> dict:
    export_npz(Pool(pool_dir), out)
    with np.load(out, allow_pickle=False) as z:
        return {k: hashlib.sha256(np.ascontiguousarray(z[k]).tobytes()).hexdigest()
                for k in ("images", "labels")}  # fmt: skip


def measure(tmp: Path) -> dict:
    """Run both reference commands in `tmp`; their hashes and metrics rows."""
    assert main(["run", str(CONFIG), "--out", str(tmp / "tiny"), "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp / "tiny" / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if not k.startswith("seconds_")} for r in rows]
    gen = ["generate", "--per-class", "10", "--seed", "11", "--out", str(tmp / "gen"), "--quiet"]
    assert main(gen) == 0
    return {
        "tiny_pool": pool_hashes(tmp / "tiny" / "pool", tmp / "tiny.npz"),
        "tiny_metrics": rows,
        "generate_pool": pool_hashes(tmp / "gen", tmp / "gen.npz"),
    }


@needs_data
def test_results_equal_the_recorded_ones(tmp_path):
    records = json.loads(REFERENCE.read_text())["machines"]
    if machine() not in records:
        pytest.skip(f"no recorded results for this machine ({machine()}); record them with "
                    "python -m tests.test_same_results --record")  # fmt: skip
    expected = records[machine()]
    got = measure(tmp_path)
    assert got["tiny_pool"] == expected["tiny_pool"]
    assert got["generate_pool"] == expected["generate_pool"]
    assert got["tiny_metrics"] == expected["tiny_metrics"]


if __name__ == "__main__" and "--record" in sys.argv:
    records = json.loads(REFERENCE.read_text())["machines"] if REFERENCE.is_file() else {}
    with tempfile.TemporaryDirectory() as d:
        records[machine()] = measure(Path(d))
    REFERENCE.write_text(json.dumps({"machines": records}, indent=1) + "\n")
    print(f"recorded {REFERENCE} for {machine()}")
