"""What names the real data, as plain settings (no torch: a config loads without it)."""

from __future__ import annotations

from dataclasses import dataclass

from deliberate.config import field
from deliberate.errors import DeliberateError

OOD_SETS = {  # name -> how its class folders are named
    "imagenet_v2": "index",
    "imagenet_sketch": "wnid",
    "imagenet_r": "wnid",
    "imagenet_a": "wnid",
}


@dataclass
class ImageFolderSettings:
    """Where the class folders are (ImageNet, or your own images) and which classes to use."""

    root: str | None = field(None, "folder holding the splits, one sub-folder per class in each")
    classes: str = field(
        "imagenet100",
        "imagenet100 (Tian et al. 2020, shipped), all (every folder of train_split), or a file",
    )
    synset_mapping: str | None = field(
        None, "LOC_synset_mapping.txt (names, 1k ids); null = ROOT/LOC_synset_mapping.txt if any"
    )
    val_split: str = field("val", "sub-folder of the validation set (decides patience)")
    test_split: str = field("train", "sub-folder of the held-out test set (never decides)")
    train_split: str = field(
        "train", "sub-folder of real training images: train-generator only, never the learner"
    )
    preload: bool = field(
        False,
        "decode val/test once into memory at the generator's size and channels (small images); "
        "false: stream them at image_size (ImageNet)",
    )
    image_size: int = field(224, "evaluation images: resize to size/0.875, centre crop", ge=8)
    workers: int = field(4, "DataLoader worker processes for evaluation; 0 = in process", ge=0)
    ood: dict[str, str] = field(
        {},
        "OOD sets to evaluate at the end: {imagenet_v2|imagenet_sketch|imagenet_r|imagenet_a: folder}",
    )

    def validate(self) -> None:
        bad = sorted(set(self.ood) - set(OOD_SETS))
        if bad:
            raise DeliberateError(
                f"data.imagefolder.ood: unknown set {bad[0]!r}; use {', '.join(OOD_SETS)}"
            )


@dataclass(frozen=True)
class ClassList:
    """The learner's classes: folder ids, names to prompt with, ImageNet-1k ids (or None)."""

    ids: tuple[str, ...]
    names: tuple[str, ...]
    imagenet_ids: tuple[int, ...] | None = None


@dataclass
class DataSettings:
    """Which real data gives the validation and test sets."""

    kind: str = field(
        "fashion_mnist",
        "fashion_mnist (data_dir) or imagefolder",
        choices=("fashion_mnist", "imagefolder"),
    )
    imagefolder: ImageFolderSettings = field(ImageFolderSettings(), "ImageNet-style folders")
