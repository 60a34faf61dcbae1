"""Real data and the synthetic pool.

    fashion_mnist.py   the real Fashion-MNIST idx files: val (1k) / test (9k) split of t10k
    imagefolder.py     class folders (ImageNet streamed, your own preloaded), class lists, OOD sets
    pool.py            the append-only pool of generated images (shards + manifest)
    codecs.py          how a pool stores images: raw uint8, or PNG / JPEG / WebP per image
    export.py          a pool as class folders of PNGs, one npz, a `datasets` folder, tar shards
    dataset.py         PoolDataset: a pool as a map-style torch Dataset (imports torch)
    shifted.py         the shifted test suite (Fashion-MNIST robustness)
    settings.py        DataSettings, ImageFolderSettings, ClassList (plain dataclasses)

`DataSettings` names the real data a run evaluates on; `load_split` loads it. `PoolDataset`
is imported on first use, so `import deliberate.data` stays free of torch.
"""

from __future__ import annotations

from deliberate.data.settings import ClassList, DataSettings, ImageFolderSettings

__all__ = ["ClassList", "DataSettings", "ImageFolderSettings", "PoolDataset", "load_classes",
           "load_split"]  # fmt: skip


def __getattr__(name: str):
    """`deliberate.data.PoolDataset`, imported (with torch) only when asked for."""
    if name == "PoolDataset":
        from deliberate.data.dataset import PoolDataset

        return PoolDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_classes(data: DataSettings) -> ClassList:
    """The classes the config's real data names (cheap: folders are listed, not read)."""
    if data.kind == "imagefolder":
        from deliberate.data.imagefolder import class_list

        data.imagefolder.validate()
        return class_list(data.imagefolder)
    from deliberate.data.fashion_mnist import CLASS_NAMES

    return ClassList(CLASS_NAMES, CLASS_NAMES)


def load_split(data: DataSettings, data_dir: str | None = None, image_shape=None):
    """(split, classes): the real val/test sets the config names (arrays or streamed folders).

    `image_shape` (C, H, W), the generator's, is the size preloaded ImageFolder images take.
    """
    if data.kind == "imagefolder":
        from deliberate.data.imagefolder import load_imagefolder_split  # torch, PIL

        split = load_imagefolder_split(data.imagefolder, image_shape)
        return split, split.classes
    from deliberate.data.fashion_mnist import CLASS_NAMES, load_eval_split  # numpy only

    split = load_eval_split(data_dir)
    return split, ClassList(CLASS_NAMES, CLASS_NAMES)
