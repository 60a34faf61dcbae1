"""Real data and the synthetic pool.

    fashion_mnist.py   the real Fashion-MNIST idx files: val (1k) / test (9k) split of t10k
    imagefolder.py     ImageNet-style class folders (streamed), class lists, OOD sets
    pool.py            the append-only pool of generated images (shards + manifest)
    export.py          a pool as class folders of PNGs or one npz
    shifted.py         the shifted test suite (Fashion-MNIST robustness)

`DataSettings` names the real data a run evaluates on; `load_split` loads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from deliberate.config import field
from deliberate.data.imagefolder import ClassList, ImageFolderSettings, load_imagefolder_split


@dataclass
class DataSettings:
    """Which real data gives the validation and test sets."""

    kind: str = field(
        "fashion_mnist",
        "fashion_mnist (data_dir) or imagefolder",
        choices=("fashion_mnist", "imagefolder"),
    )
    imagefolder: ImageFolderSettings = field(ImageFolderSettings(), "ImageNet-style folders")



def load_split(data: DataSettings, data_dir: str | None = None):
    """(split, classes): the real val/test sets the config names (arrays or streamed folders)."""
    if data.kind == "imagefolder":
        split = load_imagefolder_split(data.imagefolder)
        return split, split.classes
    from deliberate.data.fashion_mnist import CLASS_NAMES, load_eval_split  # numpy only

    split = load_eval_split(data_dir)
    return split, ClassList(CLASS_NAMES, CLASS_NAMES)
