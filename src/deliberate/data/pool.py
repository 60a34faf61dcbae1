"""The synthetic pool on disk: append-only npz shards plus a JSONL manifest, crash-safe.

root/pool.json (format, version, meta); root/shards/shard-NNNNNN.npz (images, ids, labels, rows;
a compressed pool has encoded, offsets, crc32 instead of images: deliberate.data.codecs);
root/manifest.jsonl (a row per image); root/columns/shard-NNNNNN.npz (that shard's rows as
fixed-width columns, see deliberate.data.columns). Shards carry their rows, so the manifest and
the columns can be rebuilt. Opening reads columns, not rows (docs/reliability.md). Every file is
opened through deliberate.data.files: regular files inside the folder only.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from deliberate import faults
from deliberate.data.codecs import PoolSettings, codec_of
from deliberate.data.columns import (
    NAMES,
    Columns,
    disagreeing_shard,
    read_columns,
    shard_columns,
    shard_stamp,
    whole_shards,
)
from deliberate.data.columns import write_columns as _write_columns
from deliberate.data.files import (
    _dumps,
    _one_line,
    atomic_file,
    check_folder,
    check_regular,
    locked,
    open_inside,
)
from deliberate.data.shards import LOAD_ERRORS as _LOAD_ERRORS
from deliberate.data.shards import (
    Damaged,
    PoolImages,
    _is_int,
    check_meta,
    corrupt_shard,
    memmap_images,
    read_header,
    read_shard,
    rows_disagree,
    write_header,
)
from deliberate.data.staging import Staging, _shard_name
from deliberate.errors import DeliberateError

__all__ = ["Pool", "PoolImages", "atomic_file", "RESERVED"]

RESERVED = ("id", "shard", "index")  # assigned by the pool, never by the caller


class Pool(Staging):
    """An append-only pool of uint8 images with one manifest row per image; shards are the truth."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._shard_dir = self.root / "shards"
        self._manifest = self.root / "manifest.jsonl"
        self._staging = self.root / "staging"  # shards written, not yet committed (`stage`)
        self.meta = read_header(self.root)
        with self._lock():
            self._scan()

    @classmethod
    def create(cls, root: str | Path, meta: Mapping[str, Any]) -> Pool:
        """Create an empty pool in a new or empty directory (meta: image_shape, class_names...)."""
        root = Path(root)
        if check_regular(root / "pool.json"):
            raise DeliberateError(f"{root} already holds a pool; open it with Pool(root)")
        for tmp in root.glob(".*.tmp"):  # left by a create killed before its rename
            tmp.unlink()
        if root.exists() and any(root.iterdir()):
            raise DeliberateError(f"{root} is not empty; choose a new or empty pool directory")
        meta = check_meta(meta, root)
        root.mkdir(parents=True, exist_ok=True)
        write_header(root, meta)  # its presence (whole, thanks to the rename) marks a pool
        return cls(root)

    @classmethod
    def open_or_create(cls, root: str | Path, meta: Mapping[str, Any]) -> Pool:
        """Open the pool at root (checking meta agrees) or create it; what a resumed run calls."""
        if not check_regular(Path(root) / "pool.json"):  # a symlink there is refused
            return cls.create(root, meta)
        pool, meta = cls(root), check_meta(meta, Path(root))
        want, have = ({"codec": "raw", **m} for m in (meta, pool.meta))  # raw pools record none
        for key in sorted(want.keys() & have.keys()):
            if want[key] != have[key]:
                raise pool._err(f"has {key}={have[key]!r} not {want[key]!r}; use another dir")
        return pool

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """(H, W) or (H, W, C) of every image, or None before the first append fixes it."""
        shape = self.meta.get("image_shape")
        return None if shape is None else tuple(shape)

    @property
    def codec(self) -> PoolSettings:
        """How the pool stores its images (deliberate.data.codecs); no codec in the meta: raw."""
        return codec_of(self.meta)

    @property
    def num_classes(self) -> int | None:
        names = self.meta.get("class_names")
        return self.meta.get("num_classes", None if names is None else len(names))

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")

    @property
    def shards(self) -> list[str]:
        return [name for name, _, _ in self._shards]

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"Pool({str(self.root)!r}, images={len(self)}, shards={len(self._shards)})"

    def _err(self, msg: str) -> DeliberateError:
        return DeliberateError(f"pool at {self.root}: {msg}")

    def append(self, images: np.ndarray, records: Sequence[Mapping[str, Any]]) -> list[int]:
        """Write one shard atomically, then its manifest rows; return the ids given to images."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            got = getattr(images, "dtype", type(images).__name__)
            raise self._err(f"images must be a uint8 array, not {got}; use np.uint8 in 0..255")
        if images.ndim not in (3, 4):
            raise self._err(f"images must be (N,H,W) or (N,H,W,C), not shape {images.shape}")
        if len(records) != len(images):
            raise self._err(f"{len(images)} images but {len(records)} records; give one each")
        if len(images) == 0:
            return []  # a rank may get an empty slice; an empty shard would carry no rows
        with self._lock():
            self._refresh()  # another process may have appended since we last looked
            shape = tuple(images.shape[1:])
            if self.image_shape is not None and shape != self.image_shape:
                raise self._err(f"images are {shape}, the pool holds {self.image_shape}; resize")
            self.codec.check_shape(shape)  # before the first append fixes the shape
            first, name = len(self), _shard_name(len(self._shards))
            rows = [self._row(first + i, name, i, r) for i, r in enumerate(records)]
            payload, cols = self._columns(rows, first, name)
            if self.image_shape is None:  # the first append fixes the shape for good
                self.meta = {**self.meta, "image_shape": list(shape)}
                write_header(self.root, self.meta)
            ids = np.arange(first, first + len(rows), dtype=np.int64)
            labels = np.array([r["label"] for r in rows], np.int64)
            packed = np.frombuffer(_dumps(rows).encode(), np.uint8)  # no pickles in shards
            with atomic_file(self._shard_dir / name) as f:  # raw: images; else encoded bytes
                np.savez(f, **self.codec.members(images), ids=ids, labels=labels, rows=packed)
                faults.point("pool.append_tmp_written")
            faults.point("pool.append_renamed")
            self._publish(name, payload, cols, append=True)
        return ids.tolist()

    def _columns(self, rows: list[dict], first: int, name: str) -> tuple[bytes, dict]:
        """The manifest bytes and the columns of a shard's rows; a misfit value is refused."""
        payload = "".join(_dumps(r) + "\n" for r in rows).encode()
        try:
            return payload, shard_columns(rows, first, len(payload), [0] * 6)
        except Damaged as e:
            raise self._err(f"{e}; columns hold numbers of that type only") from None

    def _publish(self, name: str, payload: bytes, cols: dict, append: bool = False) -> None:
        """A shard now in shards/ (lock held): its manifest rows, then its column file."""
        # A crash here leaves a complete shard without rows; the next open re-derives them.
        self._write_rows(payload, "pool.append_manifest_torn" if append else "pool.manifest_torn")
        faults.point("pool.append_manifest_written" if append else "pool.manifest_written")
        with open_inside(self.root, Path("shards") / name) as f:
            cols["stamp"] = np.array(shard_stamp(f), np.int64)
        self._write_columns([(name, cols)])
        self._cols.add(cols)
        self._shards.append((name, int(cols["first"][0]), len(cols["label"])))
        self._n += len(cols["label"])

    def _write_columns(self, items: list[tuple[str, dict]]) -> None:
        """Write column files (a cache: a read-only pool goes without, rebuilt when next open)."""
        with contextlib.suppress(OSError):
            if items and not check_folder(self.root / "columns"):
                (self.root / "columns").mkdir()
            for name, cols in items:
                with atomic_file(self.root / "columns" / name) as f:
                    _write_columns(f, cols)

    def _row(self, id_: int, shard: str, index: int, record: Mapping[str, Any]) -> dict:
        """Validate one caller record and turn it into a manifest row (plain JSON values)."""
        if not isinstance(record, Mapping):
            raise self._err(f"record {index} is a {type(record).__name__}; pass a dict per image")
        if clash := [k for k in RESERVED if k in record]:
            raise self._err(f"record {index} sets {clash}, which the pool assigns; drop them")
        for key in ("label", "seed"):
            if not _is_int(record.get(key)):
                raise self._err(f"record {index} needs an int {key!r}, got {record.get(key)!r}")
        n = self.num_classes
        if record["label"] < 0 or (n is not None and record["label"] >= n):
            raise self._err(f"record {index} has label {record['label']} outside 0..{(n or 1) - 1}")
        row = {"id": id_, "label": record["label"], "seed": record["seed"], "shard": shard}
        row = {**row, "index": index, **record}  # caller's extra keys follow the pool's
        try:
            return json.loads(_dumps(row))
        except (TypeError, ValueError) as e:
            raise self._err(f"record {index} is not JSON-serialisable ({_one_line(e)})") from e

    def labels(self) -> np.ndarray:
        """Every image's class id, in id order (int64)."""
        return self._cols.codes("label").copy()

    def column(self, name: str) -> np.ndarray:
        """One manifest column in id order, read-only (see deliberate.data.columns for names,
        types and what a row without the key holds: -1, NaN or '')."""
        if name not in NAMES:
            raise self._err(f"has no column {name!r}; columns are {', '.join(NAMES)}")
        return self._cols.get(name)

    def columns(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """Several columns at once, by name."""
        return {name: self.column(name) for name in names}

    def present_columns(self) -> list[str]:
        """The columns that at least one row has a value for."""
        return self._cols.present()

    def records(self, ids: Sequence[int] | np.ndarray | None = None) -> list[dict]:
        """Manifest rows in id order (all: None, read from manifest.jsonl; for small pools), or
        the rows of `ids` in the order given, read from their shards."""
        if ids is not None:
            ids = self._check_ids(ids)
            out: list[dict] = [{}] * len(ids)
            for j, sel in self._by_shard(ids):
                rows = self._load(self._shards[j][0], images=False)[3]
                for k in np.flatnonzero(sel):
                    out[k] = rows[ids[k] - self._shards[j][1]]
            return out
        with open_inside(self.root, "manifest.jsonl") as f:  # not rows appended since we looked
            lines = f.read(self._size).splitlines()
        rows = []
        with contextlib.suppress(ValueError):
            rows = [json.loads(line) for line in lines]
        if (j := disagreeing_shard(rows, self._shards, self._cols)) is None:
            return rows
        with self._lock():  # a row the columns contradict: rebuild the manifest from its shard
            self._size = sum(self._cols.nbytes[:j])
            payload = b"".join(self._rows_bytes(name) for name in self.shards[j:])
            self._write_rows(payload, "pool.repair_torn")
        return self.records()

    def _rows_bytes(self, name: str) -> bytes:
        return "".join(_dumps(r) + "\n" for r in self._load(name, images=False)[3]).encode()

    def iter_shards(self) -> Iterator[tuple[np.ndarray, np.ndarray, list[dict]]]:
        """Yield (images, labels, records) shard by shard, never holding the pool in memory."""
        for name, first, count in list(self._shards):
            images, ids, labels, rows = self._load(name)
            if len(ids) != count or ids[0] != first:
                raise self._corrupt(name, f"{len(ids)} images, the manifest says {count}")
            yield images, labels, rows

    def load_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (images, labels) of the whole pool; only for pools that fit in memory."""
        out = np.empty((len(self), *(self.image_shape or (0, 0))), np.uint8)
        for (_, first, count), (images, _, _) in zip(self._shards, self.iter_shards(), strict=True):
            out[first : first + count] = images
        return out, self.labels()

    def images_view(self, limit: int | None = None) -> PoolImages:
        """The first `limit` images (all: None) as a lazy array: `view[idx]` reads only those
        images, from shards memory-mapped in place, so training never holds the pool in RAM."""
        n = len(self) if limit is None else min(limit, len(self))
        return PoolImages(list(self._shards), n, self.image_shape or (0, 0), self._images)

    def _images(self, name: str, count: int) -> np.ndarray:
        """Shard `name`'s images, memory-mapped, refused unless they are `count` uint8 images."""
        try:
            with open_inside(self.root, Path("shards") / name) as f:
                fail = partial(self._corrupt, name)  # a damaged image found when decoded
                images = memmap_images(f, self.image_shape, self.codec, fail)
        except _LOAD_ERRORS as e:
            raise self._corrupt(name, e) from e
        if len(images) != count:
            raise self._corrupt(name, f"{len(images)} images, the manifest says {count}")
        return images

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            bad = ids[(ids < 0) | (ids >= len(self))][0]
            raise self._err(f"id {bad} is out of range 0..{len(self) - 1}")
        return ids

    def _by_shard(self, ids: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(shard number, mask of the ids in it) for each shard that holds some of `ids`."""
        which = np.searchsorted(np.array(self._cols.firsts, np.int64), ids, side="right") - 1
        for j in np.unique(which):
            yield int(j), which == j

    def get(self, ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (images, labels) for the given ids, in the order given."""
        ids = self._check_ids(ids)
        out = np.empty((len(ids), *(self.image_shape or (0, 0))), np.uint8)
        for j, sel in self._by_shard(ids):
            name, first, count = self._shards[j]
            raw = self.codec.codec == "raw"  # compressed: decode only these, not the shard
            out[sel] = (self._load(name)[0] if raw else self._images(name, count))[ids[sel] - first]
        return out, self._cols.codes("label")[ids]

    def verify(self) -> int:
        """Load every shard and check it against the manifest; return the number of images."""
        rows = self.records()
        for name, first, count in self._shards:
            images, ids, labels, shard_rows = self._load(name)
            if images.shape != (count, *self.image_shape) or images.dtype != np.uint8:
                raise self._corrupt(name, f"images are {images.dtype}{images.shape}")
            span = slice(first, first + count)
            want = [list(range(first, first + count)), self.labels()[span].tolist(), rows[span]]
            if [ids.tolist(), labels.tolist()] != want[:2]:
                raise self._corrupt(name, "its ids or labels disagree with the manifest")
            if shard_rows != want[2]:  # the shard's own copy of its rows is checked on read
                raise rows_disagree(self.root, name)
        return len(rows)

    def refresh(self) -> None:
        """Pick up shards appended by other processes since this object last looked."""
        with self._lock():
            self._refresh()

    def _refresh(self) -> None:
        """Rescan (lock held) only if the manifest or the shard list changed under us."""
        nxt = self._shard_dir / _shard_name(len(self._shards))
        if self._manifest_bytes() != self._size or nxt.exists():
            self.meta = read_header(self.root)
            self._scan()

    def _lock(self) -> contextlib.AbstractContextManager:
        """Hold the pool's exclusive lock, so no reader 'repairs' a shard a writer is finishing."""
        return locked(self.root)

    def _scan(self) -> None:
        """Reconcile the manifest and the columns with the shards on disk, repairing what a
        crash left behind. Everything is read and checked first; only then is anything written."""
        names = sorted(p.name for p in self._shard_dir.glob("shard-*.npz"))
        names.sort(key=len)  # numeric order, even past shard-999999
        for j, name in enumerate(names):
            if name != _shard_name(j):
                raise self._err(
                    f"{_shard_name(j)} is missing but {name} exists (ids would skip); "
                    "restore it or delete every shard after it"
                )
        cols, table, fresh, pos = Columns(), [], [], 0
        for name in names:
            c = self._cached_columns(name, pos)
            if c is None:  # no column file, or not one built from these shard bytes
                c = self._derive_columns(name, pos)
                fresh.append((name, c))
            cols.add(c)
            table.append((name, pos, len(c["label"])))
            pos += len(c["label"])
        self._shards, self._cols, self._n = table, cols, pos  # (name, first id, count) per shard
        size = self._manifest_bytes()
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(open_inside(self.root, "manifest.jsonl")) if size >= 0 else None
            keep = whole_shards(f, size, table, cols, self.root) if f else 0
        self._size = sum(cols.nbytes[:keep])  # manifest bytes reconciled with the shards
        payload = b"".join(self._rows_bytes(name) for name in names[keep:])
        if not check_folder(self._shard_dir):
            self._shard_dir.mkdir()
        for tmp in [*self._shard_dir.glob(".*.tmp"), *self.root.glob(".*.tmp"),
                    *self.root.glob("columns/.*.tmp")]:  # fmt: skip
            tmp.unlink()  # a writer died before its rename, so nobody ever saw this file
        if payload or size != self._size:
            self._write_rows(payload, "pool.repair_torn")
        self._write_columns(fresh)

    def _cached_columns(self, name: str, first: int) -> dict | None:
        """Shard `name`'s column file if it was built from the shard's bytes as they are now."""
        try:
            with open_inside(self.root, Path("shards") / name) as f:
                stamp = shard_stamp(f)
        except _LOAD_ERRORS as e:
            raise self._corrupt(name, e) from e
        if not check_regular(self.root / "columns" / name):
            return None
        with open_inside(self.root, Path("columns") / name) as f:
            return read_columns(f, stamp, first)

    def _derive_columns(self, name: str, first: int) -> dict:
        """Shard `name`'s columns from its rows, refused unless its ids continue from `first`."""
        _, ids, labels, rows = self._load(name, images=False)
        expect = list(range(first, first + len(ids)))
        if not expect or ids.tolist() != expect or [r.get("id") for r in rows] != expect:
            raise self._corrupt(name, f"its ids do not continue from {first}")
        if [r.get("label") for r in rows] != labels.tolist():
            raise self._corrupt(name, "its rows' labels are not its labels")
        with open_inside(self.root, Path("shards") / name) as f:
            stamp = shard_stamp(f)
        try:
            nbytes = len("".join(_dumps(r) + "\n" for r in rows).encode())
            return shard_columns(rows, first, nbytes, stamp)
        except Damaged as e:
            raise self._corrupt(name, str(e)) from e

    def _write_rows(self, payload: bytes, torn: str) -> None:
        """Cut the manifest after the rows we trust (dropping a stale tail), append, and sync;
        `torn` names the kill point between the two halves of the rows."""
        with open_inside(self.root, "manifest.jsonl", "ab") as f:
            f.truncate(self._size)
            f.write(payload[: len(payload) // 2])
            f.flush()
            faults.point(torn)
            f.write(payload[len(payload) // 2 :])
            f.flush()
            os.fsync(f.fileno())
        self._size += len(payload)

    def _manifest_bytes(self) -> int:
        return self._manifest.lstat().st_size if check_regular(self._manifest) else -1

    def _load(
        self, name: str | Path, images: bool = True
    ) -> tuple[Any, np.ndarray, np.ndarray, list]:
        """Read one shard (a name in shards/, or a path; images optional); damage -> one line."""
        path = name if isinstance(name, Path) else self._shard_dir / name
        try:
            with open_inside(self.root, path.relative_to(self.root)) as f:
                return read_shard(f, self.image_shape, images, self.num_classes, self.codec)
        except _LOAD_ERRORS as e:
            raise self._corrupt(path.name, e) from e

    def _corrupt(self, name: str, why: str | BaseException) -> DeliberateError:
        return corrupt_shard(self.root, name, why)
