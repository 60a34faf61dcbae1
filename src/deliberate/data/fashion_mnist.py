"""Locate, validate and load the real Fashion-MNIST idx files; split the real test set once.

The learner never sees a real training image: the 60k training split exists only to train the
embedded generator (our stand-in for web-scale pretraining). The 10k test split is divided once,
deterministically and stratified, into a 1,000-image validation set (the patience signal) and a
9,000-image test set (headline accuracy, never used for a decision).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deliberate.errors import DeliberateError

ENV_VAR = "DELIBERATE_DATA_DIR"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_COUNTS = {"train": 60_000, "test": 10_000}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049
HOW_TO_GET = (
    "install them with `sudo apt-get install dataset-fashion-mnist`, "
    f"or point --data-dir (or ${ENV_VAR}) at a folder holding the four idx files"
)


@dataclass(frozen=True)
class FashionMNIST:
    """The real data, as uint8 images (N, 28, 28) and int64 labels (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    root: Path
    class_names: tuple[str, ...] = CLASS_NAMES


@dataclass(frozen=True)
class EvalSplit:
    """The fixed division of the real test split into validation and test images."""

    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def _candidates(data_dir: str | Path | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir)]
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR])]
    return [DEFAULT_DIR]


def _find_file(root: Path, stem: str) -> Path | None:
    """Find `stem` or `stem.gz` in root or in torchvision's `FashionMNIST/raw` below it."""
    for folder in (root, root / "raw", root / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def find_data_dir(data_dir: str | Path | None = None) -> Path:
    """Return the folder holding the four idx files, or raise a one-line error saying how to get them."""
    for root in _candidates(data_dir):
        if all(_find_file(root, stem) for stem in FILES.values()):
            return root
    root = _candidates(data_dir)[0]
    missing = [stem for stem in FILES.values() if _find_file(root, stem) is None]
    raise DeliberateError(
        f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}): {HOW_TO_GET}"
    )


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DeliberateError(
            f"{path} is unreadable or corrupt ({e}): reinstall it; {HOW_TO_GET}"
        ) from None


def read_idx(path: str | Path, *, expect_count: int, images: bool) -> np.ndarray:
    """Read one idx file, checking magic number, count, shape, length and (for labels) range."""
    path = Path(path)
    raw = _read_bytes(path)
    fix = f"the file is damaged: reinstall it; {HOW_TO_GET}"
    header = 16 if images else 8
    if len(raw) < header:
        raise DeliberateError(f"{path} is truncated ({len(raw)} bytes, no idx header): {fix}")
    magic, count = (int.from_bytes(raw[i : i + 4], "big") for i in (0, 4))
    want_magic = _IMAGE_MAGIC if images else _LABEL_MAGIC
    if magic != want_magic:
        raise DeliberateError(f"{path} has magic number {magic}, expected {want_magic}: {fix}")
    if count != expect_count:
        raise DeliberateError(f"{path} holds {count} items, expected {expect_count}: {fix}")
    shape: tuple[int, ...] = (count,)
    if images:
        rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (8, 12))
        if (rows, cols) != (28, 28):
            raise DeliberateError(f"{path} has {rows}x{cols} images, expected 28x28: {fix}")
        shape = (count, rows, cols)
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DeliberateError(
            f"{path} is {len(raw)} bytes, expected {expected} (truncated?): {fix}"
        )
    data = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
    if not images:
        if data.max() >= len(CLASS_NAMES):
            raise DeliberateError(f"{path} has label {int(data.max())} outside 0..9: {fix}")
        return data.astype(np.int64)
    return data.copy()


def load_fashion_mnist(data_dir: str | Path | None = None) -> FashionMNIST:
    """Load and validate all four files from --data-dir, $DELIBERATE_DATA_DIR or the Debian path."""
    root = find_data_dir(data_dir)
    arrays = {}
    for key, stem in FILES.items():
        split, kind = key.split("_")
        path = _find_file(root, stem)
        arrays[key] = read_idx(path, expect_count=_COUNTS[split], images=kind == "images")
    return FashionMNIST(root=root, **arrays)


def split_test(
    images: np.ndarray, labels: np.ndarray, *, val_size: int = 1000, seed: int = 0
) -> EvalSplit:
    """Divide the real test split into stratified val/test parts; the same inputs give the same split."""
    num_classes = int(labels.max()) + 1
    if val_size % num_classes:
        raise DeliberateError(
            f"val_size={val_size} must be a multiple of the {num_classes} classes"
        )
    rng = np.random.default_rng(seed)
    per_class = val_size // num_classes
    val_idx = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        val_idx.append(np.sort(rng.permutation(idx)[:per_class]))
    val = np.sort(np.concatenate(val_idx))
    test = np.setdiff1d(np.arange(len(labels)), val)
    return EvalSplit(images[val], labels[val], images[test], labels[test])


def load_eval_split(data_dir: str | Path | None = None, *, seed: int = 0) -> EvalSplit:
    """The fixed 1,000-image validation and 9,000-image test sets of real Fashion-MNIST."""
    data = load_fashion_mnist(data_dir)
    return split_test(data.test_images, data.test_labels, seed=seed)
