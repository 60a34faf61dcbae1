"""Staged shards: several processes (torchrun ranks) write future shards to staging/ at once,
and one commits them into the pool in order, so ids never depend on who finished first."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deliberate import faults
from deliberate.data.files import (
    _dumps,
    _fsync_dir,
    atomic_file,
    check_folder,
    check_regular,
    link_or_copy,
    open_fd_inside,
)
from deliberate.errors import DeliberateError


def _shard_name(j: int) -> str:
    return f"shard-{j:06d}.npz"


class Staging:
    """The staging half of `Pool` (which provides _row, _columns, _load, _publish, _lock...)."""

    def stage(
        self, images: np.ndarray, records: Sequence[Mapping[str, Any]], *, shard: int, first: int
    ) -> None:
        """Write a future shard (number `shard`, ids from `first`) to staging/, for `commit`.

        Several processes may stage at once, each its own shards: readers see nothing until
        `commit` moves a staged shard into the pool, so ids never depend on who finished first.
        """
        if self.image_shape is None:
            raise self._err("stage needs image_shape in the pool meta; give it to Pool.create")
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise self._err("staged images must be a uint8 array; use np.uint8 in 0..255")
        if tuple(images.shape[1:]) != self.image_shape or len(records) != len(images):
            raise self._err(
                f"staged {images.shape} with {len(records)} records; the pool holds "
                f"{self.image_shape} images, one record each"
            )
        name = _shard_name(shard)
        rows = [self._row(first + i, name, i, r) for i, r in enumerate(records)]
        self._columns(rows, first, name)  # refused now, not at commit
        ids = np.arange(first, first + len(rows), dtype=np.int64)
        labels = np.array([r["label"] for r in rows], np.int64)
        packed = np.frombuffer(_dumps(rows).encode(), np.uint8)
        if not check_folder(self._staging):
            try:
                self._staging.mkdir()
            except FileExistsError:  # another rank made it since the check: check what it is
                check_folder(self._staging)
        with atomic_file(self._staging / name) as f:  # raw: images; else encoded bytes
            np.savez(f, **self.codec.members(images), ids=ids, labels=labels, rows=packed)
            faults.point("pool.shard_tmp_written")
        faults.point("pool.staged")

    def stage_file(
        self, root: Path, rel: str | Path, *, shard: int, inode: tuple[int, int]
    ) -> bool:
        """Stage an existing shard file, `root/rel` (a cached round 0's), as future shard number
        `shard`: by hard link, the same inode, no copy (True); a copy where the filesystem
        refuses links (False). `inode` is the (st_dev, st_ino) the caller verified; `commit`
        checks the file like any staged shard, and nothing ever writes into a shard."""
        if not check_folder(self._staging):
            try:
                self._staging.mkdir()
            except FileExistsError:  # another rank made it since the check: check what it is
                check_folder(self._staging)
        dst = self._staging / _shard_name(shard)
        if check_regular(dst):  # left by an interrupted attempt at this shard
            dst.unlink()
        fd = open_fd_inside(root, rel)  # a regular file, reached through no symlink
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != inode:
                raise DeliberateError(f"{Path(root) / rel} changed since it was verified; re-run")
            return link_or_copy(Path(root) / rel, fd, dst)
        finally:
            os.close(fd)

    def staged(self) -> dict[int, list[int]]:
        """The complete staged shards: shard number -> the seeds of its images, in order."""
        out = {}
        staged = sorted(self._staging.glob("shard-*.npz")) if check_folder(self._staging) else []
        for path in staged:
            with contextlib.suppress(DeliberateError):  # unreadable: as good as absent
                out[int(path.name[6:-4])] = [r["seed"] for r in self._load(path)[3]]
        return out

    def unstage(self, numbers: Iterable[int]) -> None:
        """Delete these staged shards and any half-written staging file (no writer may be busy)."""
        if check_folder(self._staging):
            for path in [*(self._staging / _shard_name(n) for n in numbers),
                         *self._staging.glob(".*.tmp")]:  # fmt: skip
                path.unlink(missing_ok=True)

    def commit(self) -> int:
        """Move the staged shards that continue the pool into it, in order; return their images."""
        moved = 0
        with self._lock():
            self._refresh()
            while (src := self._staging / _shard_name(len(self._shards))).exists():
                _, ids, labels, rows = self._load(src)
                first, name = len(self), src.name
                if ids.tolist() != list(range(first, first + len(ids))):
                    raise self._err(f"staged {name} does not continue from id {first}; delete it")
                payload, cols = self._columns(rows, first, name)
                os.replace(src, self._shard_dir / name)
                _fsync_dir(self._shard_dir)
                faults.point("pool.shard_renamed")
                self._publish(name, payload, cols)
                moved += len(ids)
        return moved
