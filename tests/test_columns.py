"""The columnar manifest: columns agree with the rows, misfits are refused, stale caches rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError


def make(root: Path, sizes=(3, 4, 2)) -> Pool:
    pool = Pool.create(root, {"class_names": list("abcde")})
    for n in sizes:
        first = len(pool)
        pool.append(np.zeros((n, 2, 2), np.uint8), [
            {"label": (first + i) % 5, "seed": 100 + first + i, "round": first % 3,
             "entropy": 0.5 + i, "learner_pred": float(i % 5),
             **({"fingerprint": f"f{first}"} if first else {})}
            for i in range(n)
        ])  # fmt: skip
    return pool


def test_columns_are_the_rows_in_id_order(tmp_path):
    pool = make(tmp_path / "pool")
    rows = Pool(tmp_path / "pool").records()
    again = Pool(tmp_path / "pool")
    for name in ("label", "seed", "round", "entropy", "learner_pred"):
        assert again.column(name).tolist() == [r[name] for r in rows], name
    assert again.column("fingerprint").tolist() == [r.get("fingerprint", "") for r in rows]
    assert np.isnan(again.column("omega")).all() and "omega" not in again.present_columns()
    assert again.column("round").dtype == np.int32 and not again.column("round").flags.writeable
    assert again.records([8, 0, 3]) == [rows[8], rows[0], rows[3]]
    pool.append(np.zeros((1, 2, 2), np.uint8), [{"label": 1, "seed": 7, "round": 9}])
    assert pool.column("round").tolist()[-1] == 9 and len(pool.column("label")) == 10
    with pytest.raises(DeliberateError, match="has no column 'rounds'"):
        pool.column("rounds")


@pytest.mark.parametrize("record", [{"round": "two"}, {"learner_pred": 3.5}, {"round": 2**40},
                                    {"fingerprint": 3}, {"entropy": True}])  # fmt: skip
def test_a_value_its_column_cannot_hold_is_refused_before_writing(tmp_path, record):
    pool = make(tmp_path / "pool")
    before = sorted(p.name for p in (tmp_path / "pool").rglob("*"))
    with pytest.raises(DeliberateError, match="columns hold"):
        pool.append(np.zeros((1, 2, 2), np.uint8), [{"label": 0, "seed": 1, **record}])
    assert sorted(p.name for p in (tmp_path / "pool").rglob("*")) == before and len(pool) == 9


DAMAGE = {
    "deleted": lambda p: p.unlink(),
    "garbage": lambda p: p.write_bytes(b"PK\x03\x04 not a zip"),
    "another shard's": lambda p: p.write_bytes((p.parent / "shard-000000.npz").read_bytes()),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_missing_damaged_or_stale_column_file_is_rebuilt_from_its_shard(tmp_path, damage):
    make(tmp_path / "pool")
    path = tmp_path / "pool" / "columns" / "shard-000001.npz"
    good = path.read_bytes()
    DAMAGE[damage](path)
    pool = Pool(tmp_path / "pool")
    assert path.read_bytes() == good and pool.verify() == 9
    assert pool.column("seed").tolist() == list(range(100, 109))


def test_a_same_length_edit_of_a_row_is_repaired_when_rows_are_read(tmp_path):
    make(tmp_path / "pool")
    manifest = tmp_path / "pool" / "manifest.jsonl"
    good = manifest.read_bytes()
    lines = good.splitlines(True)
    row = json.loads(lines[4])
    lines[4] = (json.dumps({**row, "seed": row["seed"] + 1}) + "\n").encode()  # 104 -> 105
    manifest.write_bytes(b"".join(lines))
    pool = Pool(tmp_path / "pool")  # the shard's first and last rows are intact: not seen yet
    assert pool.records()[4]["seed"] == 104 and manifest.read_bytes() == good
