"""Reading pool shards in place: an npz member memory-mapped, and the pool's images as one lazy
array over its shards (`Pool.images_view`), so a pool never needs to fit in RAM."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from deliberate.data.files import _one_line

LOAD_ERRORS = (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile)


def _npz_member_memmap(path: Path, member: str) -> np.memmap | None:
    """Memory-map an uncompressed .npy member of an .npz in place; None when it is compressed.

    `np.savez` stores members uncompressed (ZIP_STORED): the member's bytes are a plain .npy
    file at a fixed offset, after the zip local header whose name and extra lengths vary.
    """
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the fixed part of the local file header
        name_len, extra_len = (int.from_bytes(local[i : i + 2], "little") for i in (26, 28))
        f.seek(info.header_offset + 30 + name_len + extra_len)
        fmt = np.lib.format
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell()
    return np.memmap(path, dtype, "r", offset, shape, "F" if fortran else "C")


def shard_images(path: Path, count: int, corrupt) -> np.ndarray:
    """One shard's (count, H, W[, C]) uint8 images, memory-mapped in place; damage -> one line."""
    try:
        images = _npz_member_memmap(path, "images.npy")
        if images is None:  # a compressed shard (written by hand): load it whole
            with np.load(path, allow_pickle=False) as z:
                images = z["images"]
    except LOAD_ERRORS as e:
        raise corrupt(path.name, _one_line(e)) from e
    if len(images) != count or images.dtype != np.uint8:
        raise corrupt(path.name, f"{len(images)} images, the manifest says {count}")
    return images


class PoolImages:
    """A pool's images by id, as a read-only lazy array (see `Pool.images_view`)."""

    def __init__(self, shards: list[tuple[Path, int, int]], n: int, shape, corrupt):
        self._shards, self._n, self.shape = shards, n, (n, *shape)
        self._firsts = np.array([first for _, first, _ in shards], np.int64)
        self._maps: dict[int, np.ndarray] = {}
        self._corrupt = corrupt
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self._n

    def _shard(self, j: int) -> np.ndarray:
        if j not in self._maps:
            path, _, count = self._shards[j]
            self._maps[j] = shard_images(path, count, self._corrupt)
        return self._maps[j]

    def __getitem__(self, idx) -> np.ndarray:
        """Images at integer ids (array-like, e.g. a sampler's batch) or a slice, in order."""
        if isinstance(idx, slice):  # e.g. evaluation batches, images[s : s + 1000]
            idx = np.arange(*idx.indices(self._n))
        ids = np.asarray(idx, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self._n):
            raise IndexError(f"image id out of range 0..{self._n - 1}")
        out = np.empty((len(ids), *self.shape[1:]), np.uint8)
        which = np.searchsorted(self._firsts, ids, side="right") - 1
        for j in np.unique(which):
            sel = which == j
            out[sel] = self._shard(int(j))[ids[sel] - self._firsts[j]]
        return out
