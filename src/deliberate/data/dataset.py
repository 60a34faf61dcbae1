"""A pool as a map-style torch Dataset, for anyone's training loop (`deliberate.data.PoolDataset`).

The only module of `deliberate.data` that imports torch; the package exposes it lazily.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from deliberate.data.export import _to_pil
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError


class PoolDataset(Dataset):
    """The images of the pool at `pool_dir` by id: `ds[i]` is `(image, label)`, or
    `(image, label, record)` with `with_record` (the manifest row: seed, round, omega, entropy...).

    Without `transform` the image is a float tensor (C, H, W) in [0, 1], like torchvision's
    `ToTensor` (a grey (H, W) pool gives C = 1). With `transform`, as in torchvision's datasets,
    the transform receives a PIL image (mode L, RGB or RGBA) and returns what it likes, so
    `transforms.Compose([..., ToTensor()])` pipelines work unchanged. `target_transform` gets
    the int label. `classes` and `targets` follow torchvision's names.

    The pool is read as it was when the dataset was made. Shards are memory-mapped lazily, one at
    a time (the last one read is kept), so each DataLoader worker opens only what it reads and
    the dataset pickles without open files (`num_workers > 0` with fork or spawn).
    """

    def __init__(
        self,
        pool_dir: str | Path,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        with_record: bool = False,
    ):
        pool = Pool(pool_dir)
        if len(pool) == 0:
            raise DeliberateError(f"pool at {pool.root} is empty; append images before loading it")
        if transform is not None:
            _to_pil(np.zeros(pool.image_shape, np.uint8))  # e.g. 2 channels: no PIL mode
        self.root = pool.root
        self.transform, self.target_transform = transform, target_transform
        self.with_record = with_record
        self.targets: list[int] = pool.labels().tolist()
        n_classes = max(pool.num_classes or 0, max(self.targets) + 1)
        self.classes: list[str] = pool.class_names or [str(c) for c in range(n_classes)]
        # The pool's shard table as of now: (name, first id, count); same package, so the
        # private fields are ours to read.
        self._shards = list(pool._shards)
        self._firsts = np.array([first for _, first, _ in self._shards], np.int64)
        self._pool = pool  # for its one-line corrupt-shard messages and shard rows (no open files)
        self._last: tuple[int, np.ndarray, list[dict] | None] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_last"] = None  # a memory map would pickle as a full copy of its shard
        return state

    def _shard(self, j: int) -> tuple[np.ndarray, list[dict] | None]:
        """Shard j's images (memory-mapped) and, with `with_record`, its manifest rows."""
        if self._last is None or self._last[0] != j:
            name, _, count = self._shards[j]
            images = self._pool._images(name, count)  # memory-mapped, through open_inside
            rows = self._pool._load(name, images=False)[3] if self.with_record else None
            self._last = (j, images, rows)
        return self._last[1], self._last[2]

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        n = len(self.targets)
        i = operator.index(i)  # ints and NumPy ints; anything else is a TypeError, as for lists
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for a pool of {n} images")
        i %= n
        j = int(np.searchsorted(self._firsts, i, side="right")) - 1
        images, rows = self._shard(j)
        at = i - int(self._firsts[j])
        pixels = np.array(images[at])  # a copy: tensors must not alias the memory map
        if self.transform is None:
            image = torch.from_numpy(pixels if pixels.ndim == 3 else pixels[:, :, None])
            image = image.permute(2, 0, 1).contiguous().float().div_(255)  # (C, H, W)
        else:
            image = self.transform(_to_pil(pixels))
        label = self.targets[i]
        if self.target_transform is not None:
            label = self.target_transform(label)
        return (image, label, dict(rows[at])) if self.with_record else (image, label)

    def __repr__(self) -> str:
        return f"PoolDataset({str(self.root)!r}, images={len(self)}, classes={len(self.classes)})"
