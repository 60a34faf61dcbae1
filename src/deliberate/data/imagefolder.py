"""ImageNet-style folders: class subsets (ImageNet-100), real val/test streamed from disk, OOD sets.

Layout: ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG`` (torchvision ImageFolder; the
validation images must be sorted into one folder per WordNet id). As in the paper (SPEC §1), the
learner never trains on a real image: the real **val** split is the validation set (patience
signal and "IN real Val."), the real **train** split is the held-out test set ("IN real tr.").

The class subset is a list of WordNet ids: ``imagenet100`` is the list of Tian et al. 2020
(CMC), shipped in ``data/lists/imagenet100.txt``; ``all`` takes every folder in train/; any other
value is a file with one id per line. Class k of the learner is the k-th id of that list.
Human-readable names (for Stable Diffusion prompts) and ImageNet-1k indices (for DiT and
ImageNet-V2) come from ``LOC_synset_mapping.txt`` (one "wnid name, synonyms" line per class,
in ImageNet-1k order, shipped with the Kaggle ImageNet download) when it is given or found in
ROOT, else from train/ when it holds all 1,000 class folders (the index of a class is the
position of its wnid in the sorted list of the 1,000 ids).

OOD sets (ImageNet-V2, -Sketch, -R, -A) are evaluated on the classes they share with the subset.
ImageNet-R and -A hold 200 classes; the learner's logits are then restricted to the shared
classes (Hendrycks et al.'s convention for the 200-class sets) and the number of classes
evaluated is reported with the accuracy. ImageNet-V2 folders are named by ImageNet-1k index.

Your own images (docs/your-data.md) use the same reader with ``train/``, ``val/`` and ``test/``
folders of any class names (``classes: all``): ``train/`` trains the generator only
(`load_train_images`), and with ``preload`` the small val/test sets are decoded once into uint8
arrays at the generator's size and channels, like Fashion-MNIST's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deliberate.data.settings import OOD_SETS, ClassList, ImageFolderSettings
from deliberate.errors import DeliberateError

LISTS = Path(__file__).resolve().parent / "lists"
IMAGENET100 = LISTS / "imagenet100.txt"
SYNSET_FILE = "LOC_synset_mapping.txt"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
def read_class_file(path: str | Path) -> list[str]:
    """One class id per line; blank lines and '#' comments are ignored; no duplicates."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DeliberateError(
            f"cannot read class list {path}: {e.strerror}; check the path"
        ) from None
    ids = [line.split("#")[0].strip() for line in lines]
    ids = [i for i in ids if i]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if not ids or dup:
        why = f"lists {dup[0]} twice" if dup else "is empty"
        raise DeliberateError(f"class list {path} {why}; give each class once, one per line")
    return ids


def read_synset_mapping(path: str | Path) -> dict[str, tuple[int, str]]:
    """LOC_synset_mapping.txt -> {wnid: (ImageNet-1k index = line number, first synonym)}."""
    out = {}
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if line.strip():
            wnid, _, words = line.strip().partition(" ")
            out[wnid] = (i, words.split(",")[0].strip() or wnid)
    if len(out) != 1000:
        raise DeliberateError(
            f"{path} has {len(out)} classes, not ImageNet-1k's 1,000; use the original LOC_synset_mapping.txt"
        )
    return out


def _split_dir(root: Path, split: str) -> Path:
    folder = root / split
    if not folder.is_dir():
        raise DeliberateError(
            f"{folder} not found: data.imagefolder.root must hold {split}/ with one folder per "
            "class (docs/paper-scale.md)"
        )
    return folder


def _class_folders(folder: Path) -> list[str]:
    """The sorted names of the class sub-folders of a split (hidden folders skipped)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def class_list(s: ImageFolderSettings) -> ClassList:
    """The learner's classes: the chosen wnids with their names and ImageNet-1k ids if known."""
    if not s.root:
        raise DeliberateError("data.kind imagefolder needs data.imagefolder.root")
    root = Path(s.root).expanduser()
    listed = s.train_split if (root / s.train_split).is_dir() else s.test_split
    folders = _class_folders(_split_dir(root, listed))
    if s.classes == "all":
        ids = folders
        if not ids:
            raise DeliberateError(
                f"{root / listed} holds no class folders; put each class's images in "
                f"{root / listed}/<class name>/"
            )
    else:
        ids = read_class_file(IMAGENET100 if s.classes == "imagenet100" else s.classes)
    mapping_file = Path(s.synset_mapping) if s.synset_mapping else root / SYNSET_FILE
    if s.synset_mapping and not mapping_file.is_file():
        raise DeliberateError(f"data.imagefolder.synset_mapping {mapping_file} does not exist")
    if mapping_file.is_file():
        mapping = read_synset_mapping(mapping_file)
        unknown = [i for i in ids if i not in mapping]
        if unknown:
            raise DeliberateError(
                f"class {unknown[0]} is not in {mapping_file}; check the class list"
            )
        return ClassList(
            tuple(ids), tuple(mapping[i][1] for i in ids), tuple(mapping[i][0] for i in ids)
        )
    index = {w: k for k, w in enumerate(folders)} if len(folders) == 1000 else {}
    known = all(i in index for i in ids)
    return ClassList(tuple(ids), tuple(ids), tuple(index[i] for i in ids) if known else None)


def list_images(folder: Path, ids: tuple[str, ...], *, where: str) -> tuple[list[str], np.ndarray]:
    """Sorted image files of each class folder and their labels (index into ids)."""
    files, labels = [], []
    missing = [i for i in ids if not (folder / i).is_dir()]
    if missing:
        raise DeliberateError(
            f"{len(missing)} of {len(ids)} classes have no folder in {folder} (first: {missing[0]}); "
            f"fix the class list or {where}"
        )
    for k, wnid in enumerate(ids):
        names = sorted(
            e.name for e in os.scandir(folder / wnid) if e.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not names:
            raise DeliberateError(f"{folder / wnid} holds no images; fix {where}")
        files += [str(folder / wnid / n) for n in names]
        labels += [k] * len(names)
    return files, np.asarray(labels, dtype=np.int64)


class _Files(torch.utils.data.Dataset):
    def __init__(self, files: list[str], size: int):
        from torchvision import transforms

        self.files = files
        self.transform = transforms.Compose(
            [
                transforms.Resize(round(size / 0.875)),
                transforms.CenterCrop(size),
                transforms.ToTensor(),  # float (3, S, S) in [0, 1]
            ]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB"))


class StreamedImages:
    """Real images read from disk batch by batch; `learner.evaluate` accepts it like an array."""

    def __init__(self, files: list[str], size: int, workers: int = 0):
        self.dataset, self.size, self.workers = _Files(files, size), size, workers

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, part: slice) -> StreamedImages:
        """A contiguous block of the files (a rank's share of an evaluation under torchrun)."""
        return StreamedImages(self.dataset.files[part], self.size, self.workers)

    def iter_batches(self, batch_size: int):
        """Yield (start, float images (B, 3, S, S) in [0, 1]) in file order, B <= 256."""
        # Capped: each worker prefetches two batches, and 1,000 224² images are 600 MB.
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=min(batch_size, 256),
            shuffle=False,
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
        )
        start = 0
        for batch in loader:
            yield start, batch
            start += len(batch)


@dataclass(frozen=True)
class ImageFolderSplit:
    """Validation and test sets streamed from disk, in `EvalSplit`'s shape, plus the classes."""

    val_images: StreamedImages
    val_labels: np.ndarray
    test_images: StreamedImages
    test_labels: np.ndarray
    classes: ClassList


def _split_files(s: ImageFolderSettings, split: str, classes: ClassList):
    """(files, labels) of one split; with `classes: all`, a class folder that train_split
    lacks is refused (its images would have no label)."""
    folder = _split_dir(Path(s.root).expanduser(), split)
    if s.classes == "all":
        extra = sorted(set(_class_folders(folder)) - set(classes.ids))
        if extra:
            raise DeliberateError(
                f"class folder {folder / extra[0]} is not in {s.train_split}/ (the classes are "
                f"{s.train_split}/'s folders); add its training images or remove it"
            )
    return list_images(folder, classes.ids, where="data.imagefolder.root")


def load_imagefolder_split(
    s: ImageFolderSettings, image_shape: tuple[int, int, int] | None = None
) -> ImageFolderSplit:
    """Index the val and test images of the chosen classes, streamed at `image_size`; with
    `preload`, decode them into uint8 arrays of `image_shape` (C, H, W), the generator's."""
    s.validate()
    classes = class_list(s)
    parts = []
    for split in (s.val_split, s.test_split):
        files, labels = _split_files(s, split, classes)
        if s.preload:
            if image_shape is None:
                raise DeliberateError("data.imagefolder.preload needs the generator's image shape")
            c, h, _ = image_shape
            parts += [decode_images(files, h, c), labels]
        else:
            parts += [StreamedImages(files, s.image_size, s.workers), labels]
    return ImageFolderSplit(*parts, classes)


PRELOAD_LIMIT = 8 << 30  # bytes of decoded pixels above which preloading is refused


def decode_images(files: list[str], size: int, channels: int) -> np.ndarray:
    """Decode image files into uint8 (N, S, S) grey or (N, S, S, 3) RGB, the pool's layout.

    Any size and mode is accepted: converted to L or RGB, the largest centred square is resized
    to size x size (PIL's antialiased bicubic). An unreadable or empty file is one error naming it.
    """
    from PIL import Image, ImageOps

    if len(files) * size * size * channels > PRELOAD_LIMIT:
        raise DeliberateError(
            f"{len(files)} images of {size}x{size}x{channels} exceed {PRELOAD_LIMIT >> 30} GiB "
            "in memory; set data.imagefolder.preload=false to stream them"
        )
    out = np.empty((len(files), size, size, channels), np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                im = ImageOps.fit(im, (size, size), method=Image.Resampling.BICUBIC)
                out[i] = np.asarray(im).reshape(size, size, channels)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DeliberateError(
                f"cannot read image {f} ({why}); remove or replace the file"
            ) from None
    return out[..., 0] if channels == 1 else out


def load_train_images(s: ImageFolderSettings, size: int, channels: int):
    """(images uint8 (N, S, S[, 3]), labels (N,), classes) of train_split: the real images a
    generator trains on. The learner never sees them."""
    s.validate()
    classes = class_list(s)
    files, labels = _split_files(s, s.train_split, classes)
    return decode_images(files, size, channels), labels, classes


@dataclass(frozen=True)
class OODSet:
    """An OOD test set restricted to the classes it shares with the learner's."""

    name: str
    images: StreamedImages
    labels: np.ndarray  # learner class indices
    covered: tuple[int, ...]  # learner classes present in the set, sorted


def load_ood(name: str, folder: str | Path, classes: ClassList, size: int = 224,
             workers: int = 0) -> OODSet:  # fmt: skip
    """Index an OOD set's images of the shared classes; labels are the learner's class indices."""
    if name not in OOD_SETS:
        raise DeliberateError(f"unknown OOD set {name!r}; use {', '.join(OOD_SETS)}")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DeliberateError(
            f"OOD set {name}: folder {folder} not found; fix data.imagefolder.ood"
        )
    present = {e.name for e in os.scandir(folder) if e.is_dir()}
    if OOD_SETS[name] == "index":
        if classes.imagenet_ids is None or len(classes.imagenet_ids) != len(classes.ids):
            raise DeliberateError(
                f"OOD set {name} names its folders by ImageNet-1k index: set "
                "data.imagefolder.synset_mapping so the class indices are known"
            )
        keys = [str(i) for i in classes.imagenet_ids]
    else:
        keys = list(classes.ids)
    covered = tuple(k for k, key in enumerate(keys) if key in present)
    if not covered:
        raise DeliberateError(f"OOD set {name} at {folder} shares no class with the class list")
    sub = tuple(keys[k] for k in covered)
    files, local = list_images(folder, sub, where=f"data.imagefolder.ood.{name}")
    return OODSet(name, StreamedImages(files, size, workers), np.asarray(covered)[local], covered)


def ood_accuracy(learner, ood: OODSet, batch_size: int = 250) -> float:
    """Top-1 accuracy over the shared classes, argmax restricted to them."""
    from deliberate.learner import _batched_logits

    covered = torch.as_tensor(ood.covered)
    correct = 0
    for start, logits in _batched_logits(learner, ood.images, batch_size):
        pred = covered[logits[:, covered.to(logits.device)].argmax(-1).cpu()]
        correct += int((pred.numpy() == ood.labels[start : start + len(pred)]).sum())
    return correct / max(len(ood.labels), 1)


def evaluate_ood(learner, s: ImageFolderSettings, classes: ClassList,
                 out_file: str | Path | None = None) -> dict[str, dict]:  # fmt: skip
    """{set: {"acc", "classes", "images"}} for every OOD set named; also written to out_file."""
    out = {}
    for name, folder in sorted(s.ood.items()):
        ood = load_ood(name, folder, classes, s.image_size, s.workers)
        acc = ood_accuracy(learner, ood)
        out[name] = {"acc": acc, "classes": len(ood.covered), "images": len(ood.labels)}
    if out_file is not None:
        from deliberate.data.pool import atomic_file

        with atomic_file(out_file) as f:
            f.write((json.dumps(out, indent=2) + "\n").encode())
    return out
