"""The manifest as fixed-width columns: per shard a small npz under columns/ (a cache of what that
shard's rows say, stamped with the zip CRC32 and size of the shard's ids, labels and rows), and
the in-memory view over all shards that `Pool.column(name)` reads, appended shard by shard.

The shards stay the truth: a column file that is missing, damaged or stamped for other shard
bytes is rebuilt from the shard's rows. Numbers are exact (a row's value must fit its column's
type: an integer column takes ints or integral floats, as learner scores are written); a row that
lacks a key holds the column's `missing` value (-1, NaN or ''), as the npz export writes them.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from deliberate.data.shards import MAX_ROW_BYTES, Damaged, _header, row_too_long

# name: (dtype, what a row without the key holds); label and seed are in every row.
NUMERIC: dict[str, tuple[type, object]] = {
    "label": (np.int64, None), "seed": (np.int64, None), "round": (np.int32, -1),
    "omega": (np.float64, np.nan), "entropy": (np.float64, np.nan),
    "learner_pred": (np.int32, -1), "guidance_skipped": (np.int32, -1),
}  # fmt: skip
STRINGS = ("fingerprint", "guide")  # few distinct values: codes into a table of them
NAMES = (*NUMERIC, *STRINGS)


def _fits(v: object, dtype: type) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    if np.dtype(dtype).kind == "f":
        return True
    info = np.iinfo(dtype)
    return (isinstance(v, int) or v.is_integer()) and info.min <= v <= info.max


def shard_columns(rows: Sequence[Mapping], first: int, nbytes: int, stamp) -> dict:
    """One shard's columns from its manifest rows; a value its column cannot hold -> Damaged."""
    out: dict[str, np.ndarray] = {}
    for name, (dtype, missing) in NUMERIC.items():
        values = [r.get(name, missing) for r in rows]
        bad = next((i for i, v in enumerate(values) if not _fits(v, dtype)), None)
        if bad is not None:
            raise Damaged(f"row {first + bad} has {name}={values[bad]!r}, not a {dtype.__name__}")
        out[name] = np.array(values, dtype)
    for name in STRINGS:
        values = [r.get(name, "") for r in rows]
        if bad := [v for v in values if not isinstance(v, str)]:
            raise Damaged(f"a row has {name}={bad[0]!r}, not a string")
        table, codes = np.unique(np.array(values, dtype=str), return_inverse=True)
        out[name], out[f"{name}_values"] = codes.astype(np.int32), table
    out["stamp"] = np.asarray(stamp, np.int64)
    out["first"], out["nbytes"] = np.array([first], np.int64), np.array([nbytes], np.int64)
    out["present"] = np.array([any(n in r for r in rows) for n in NAMES], np.uint8)
    return out


def shard_stamp(f: IO) -> list[int]:
    """What a column file is checked against: the zip CRC32 and size of the shard's ids, labels
    and rows, read from the zip directory (the members themselves are not read). The images are
    not in it: columns never depend on them."""
    with zipfile.ZipFile(f) as z:
        infos = [z.getinfo(f"{m}.npy") for m in ("ids", "labels", "rows")]
    return [v for info in infos for v in (info.CRC, info.file_size)]


_GROUPS = {kind: [n for n, (d, _) in NUMERIC.items() if d is t] for kind, t in
           (("i8", np.int64), ("i4", np.int32), ("f8", np.float64))}  # fmt: skip
_GROUPS["i4"] += list(STRINGS)  # a string column's codes
_DTYPES = {"i8": np.int64, "i4": np.int32, "f8": np.float64, "meta": np.int64}
_META_LEN = 2 + 6 + len(NAMES) + len(STRINGS)  # first, nbytes, stamp, present, table sizes


def write_columns(f: IO, cols: Mapping[str, np.ndarray]) -> None:
    """A shard's columns as one npz of five members (few members: opening reads one per shard)."""
    tables = [cols[f"{s}_values"] for s in STRINGS]
    meta = [cols["first"], cols["nbytes"], cols["stamp"], cols["present"], [len(t) for t in tables]]
    np.savez(f, **{kind: np.stack([cols[n] for n in names]) for kind, names in _GROUPS.items()},
             meta=np.concatenate(meta).astype(np.int64), values=np.concatenate(tables))  # fmt: skip


def read_columns(f: IO, stamp: list[int], first: int) -> dict | None:
    """A shard's column file, or None when it is damaged or was not built from these bytes."""
    arrays = {}
    try:
        size = os.fstat(f.fileno()).st_size
        with zipfile.ZipFile(f) as z:
            for m in (*_DTYPES, "values"):
                info, shape, fortran, dtype, start = _header(z, size, f"{m}.npy")
                with z.open(info) as member:  # the header is checked: read the bytes as they are
                    data = np.frombuffer(member.read(), dtype, offset=start)
                arrays[m] = data.reshape(shape, order="F" if fortran else "C")
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile):
        return None
    meta, values = arrays["meta"], arrays["values"]
    ok = all(arrays[k].dtype == t for k, t in _DTYPES.items()) and meta.shape == (_META_LEN,)
    n = arrays["i8"].shape[-1] if arrays["i8"].ndim == 2 else 0
    ok = ok and n > 0 and all(arrays[k].shape == (len(v), n) for k, v in _GROUPS.items())
    ok = ok and values.dtype.kind == "U" and values.ndim == 1
    if not (ok and meta[0] == first and meta[2:8].tolist() == stamp):
        return None
    sizes = meta[-len(STRINGS) :]
    if sizes.min() < 1 or sizes.sum() != len(values):
        return None
    cols = {n: arrays[kind][i] for kind, names in _GROUPS.items() for i, n in enumerate(names)}
    for name, table in zip(STRINGS, np.split(values, np.cumsum(sizes)[:-1]), strict=True):
        if cols[name].min() < 0 or cols[name].max() >= len(table):
            return None
        cols[f"{name}_values"] = table
    cols["first"], cols["nbytes"], cols["stamp"] = meta[0:1], meta[1:2], meta[2:8]
    cols["present"] = meta[8 : 8 + len(NAMES)].astype(np.uint8)
    return cols


def _row_at(f: IO, start: int, root: Path) -> dict | None:
    """The manifest row that starts at byte `start`: None if it is not a whole JSON object."""
    f.seek(start)
    line = f.readline(MAX_ROW_BYTES + 1)
    if len(line) > MAX_ROW_BYTES:
        f.seek(0)
        before = sum(f.read(min(2**20, start - i)).count(b"\n") for i in range(0, start, 2**20))
        raise row_too_long(root, before + 1)
    try:
        row = json.loads(line) if line.endswith(b"\n") else None
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _last_start(f: IO, start: int, end: int) -> int:
    """Where the line that ends at `end` begins (not before `start`), reading backwards."""
    window = 4096
    while True:
        lo = max(start, end - 1 - window)
        f.seek(lo)
        cut = f.read(end - 1 - lo).rfind(b"\n")
        if cut >= 0 or lo == start or window > MAX_ROW_BYTES:
            return lo + cut + 1 if cut >= 0 else lo
        window *= 4


def whole_shards(f: IO, size: int, table: list[tuple[str, int, int]], cols: Columns,
                 root: Path) -> int:  # fmt: skip
    """How many shards, from the first, have their rows whole in the manifest (open in `f`,
    `size` bytes): each shard's bytes where its columns say, starting with its first row and
    ending with its last. A shorter or longer line inside a shard moves its last row; a line
    of the same length is found by `Pool.records`, which checks every row."""
    label, seed, end = cols.codes("label"), cols.codes("seed"), 0
    for j, (name, first, count) in enumerate(table):
        start, end = end, end + cols.nbytes[j]
        if end > size:
            return j
        for i, at in ((first, start), (first + count - 1, _last_start(f, start, end))):
            want = {"id": i, "label": label[i], "seed": seed[i], "shard": name, "index": i - first}
            row = _row_at(f, at, root)
            if row is None or any(row.get(k) != v for k, v in want.items()):
                return j
        if f.tell() != end:  # the last row read ends where the shard's rows must
            return j
    return len(table)


def disagreeing_shard(rows: list, table: list[tuple[str, int, int]], cols: Columns) -> int | None:
    """The first shard whose manifest rows the columns contradict (None: all agree)."""
    label, seed = cols.codes("label"), cols.codes("seed")
    for j, (name, first, count) in enumerate(table):
        for i in range(first, first + count):
            r = rows[i] if i < len(rows) else None
            want = {
                "id": i,
                "label": label[i],
                "seed": seed[i],
                "shard": name,
                "index": i - first,
            }
            if not isinstance(r, dict) or any(r.get(k) != v for k, v in want.items()):
                return j
    return None


class Columns:
    """Every shard's columns, held per shard and joined on first use after an append."""

    def __init__(self):
        self._chunks: dict[str, list[np.ndarray]] = {n: [] for n in NAMES}
        self._tables: dict[str, dict[str, int]] = {n: {"": 0} for n in STRINGS}
        self._present: set[str] = set()
        self.firsts: list[int] = []  # each shard's first id
        self.nbytes: list[int] = []  # each shard's manifest bytes

    def add(self, cols: Mapping[str, np.ndarray]) -> None:
        """Append one shard's columns (as `shard_columns` or `read_columns` return them)."""
        for name in NUMERIC:
            self._chunks[name].append(cols[name])
        for name in STRINGS:
            table = self._tables[name]
            remap = np.array([table.setdefault(str(v), len(table)) for v in cols[f"{name}_values"]],
                             np.int32)  # fmt: skip
            self._chunks[name].append(remap[cols[name]])
        self._present |= {n for n, p in zip(NAMES, cols["present"], strict=True) if p}
        self.firsts.append(int(cols["first"][0]))
        self.nbytes.append(int(cols["nbytes"][0]))

    def codes(self, name: str) -> np.ndarray:
        """Column `name` as stored: numbers, or a string column's codes into `table(name)`."""
        chunks = self._chunks[name]
        if len(chunks) != 1:  # join once; later appends add chunks after this one
            dtype = np.int32 if name in STRINGS else NUMERIC[name][0]
            chunks[:] = [np.concatenate(chunks) if chunks else np.empty(0, dtype)]
        view = chunks[0].view()
        view.flags.writeable = False  # the pool's own copy: callers get it read-only
        return view

    def table(self, name: str) -> np.ndarray:
        return np.array(list(self._tables[name]), dtype=str)

    def get(self, name: str) -> np.ndarray:
        """Column `name` in id order (a string column decoded: '' where a row lacks it)."""
        if name in STRINGS:
            return self.table(name)[self.codes(name)]
        return self.codes(name)

    def present(self) -> list[str]:
        """The columns at least one row has, in NAMES order."""
        return [n for n in NAMES if n in self._present]
