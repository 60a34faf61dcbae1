"""Export a pool to formats any other tool reads: one .npz file, or an ImageFolder tree of PNGs."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from deliberate.data.pool import Pool, atomic_file
from deliberate.errors import DeliberateError


def _image_shape(pool: Pool) -> tuple[int, ...]:
    """Return the pool's image shape, refusing an empty pool (there is nothing to export)."""
    if len(pool) == 0 or pool.image_shape is None:
        raise DeliberateError(f"pool at {pool.root} is empty; append images before exporting")
    return pool.image_shape


def export_npz(pool: Pool, out_path: str | Path) -> Path:
    """Write `images` (uint8), `labels` (int64) and `ids` (int64) to one .npz, atomically.

    The images are streamed shard by shard into the archive member, so the pool is never held in
    memory; `np.load(out_path)` reads the result like any `np.savez` file.
    """
    shape, n = _image_shape(pool), len(pool)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
    # Close order matters: the zip directory is written before atomic_file syncs and renames.
    with atomic_file(out_path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        with z.open("images.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {**header, "shape": (n, *shape)})
            written = 0
            for images, _, _ in pool.iter_shards():
                member.write(np.ascontiguousarray(images).tobytes())  # (n_shard, H, W[, C])
                written += len(images)
        if written != n:  # another writer grew the pool mid-export: the header would lie
            raise DeliberateError(f"pool at {pool.root} changed during export; export again")
        for name, array in (("labels", pool.labels()), ("ids", np.arange(n, dtype=np.int64))):
            with z.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return out_path


def _folder_names(class_names: Sequence[str], num_classes: int, root: Path) -> list[str]:
    """Turn class names into unique, safe directory names (e.g. 'T-shirt/top' -> 'T-shirt_top')."""
    names = [str(c).replace("/", "_").replace("\\", "_").strip() for c in class_names]
    if len(names) < num_classes:
        raise DeliberateError(
            f"pool at {root} has {num_classes} classes but {len(names)} class names were given; "
            "pass one name per class"
        )
    bad = [c for c in names if c in ("", ".", "..") or "\0" in c]
    if bad:
        raise DeliberateError(f"class name {bad[0]!r} cannot be a folder name; rename that class")
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        # ImageNet has two 'crane' classes: names alone can't tell them apart; use wnids.
        raise DeliberateError(
            f"class folder names repeat ({', '.join(dupes)}); pass unique names such as wnids"
        )
    return names


def _to_pil(image: np.ndarray) -> Image.Image:
    """Make a PIL image from (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 pixels."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]  # PIL wants grey images without a channel axis
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        raise DeliberateError(
            f"images with {image.shape[2]} channels cannot be saved as PNG; use export_npz"
        )
    return Image.fromarray(np.ascontiguousarray(image))


def export_imagefolder(
    pool: Pool, out_dir: str | Path, class_names: Sequence[str] | None = None
) -> Path:
    """Write `out_dir/<class_name>/<id:07d>.png` for every image, as ImageFolder readers expect.

    The tree is built beside `out_dir` under a temporary name and renamed into place, so a crash
    never leaves a half-exported folder under the final name. `out_dir/classes.txt` lists the
    folder names in label order, because torchvision's ImageFolder numbers classes
    alphabetically, which differs from the pool's labels whenever names don't sort in label
    order (Fashion-MNIST's don't).
    """
    shape = _image_shape(pool)
    _to_pil(np.zeros(shape, np.uint8))  # refuse unsupported channel counts before any work
    if class_names is None:
        class_names = pool.class_names
    if class_names is None:
        raise DeliberateError(
            f"pool at {pool.root} has no class_names in its meta; pass class_names explicitly"
        )
    num_classes = pool.num_classes or int(pool.labels().max()) + 1
    names = _folder_names(class_names, num_classes, pool.root)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DeliberateError(f"{out_dir} exists and is not empty; delete it or pick another")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # leftovers of an earlier, killed export
    try:
        for name in names:
            (tmp / name).mkdir(parents=True)
        for images, labels, records in pool.iter_shards():
            for image, label, record in zip(images, labels, records, strict=True):
                _to_pil(image).save(tmp / names[label] / f"{record['id']:07d}.png")
        (tmp / "classes.txt").write_text("".join(f"{name}\n" for name in names))
        # rename(2) replaces an empty directory, so an empty out_dir is fine too.
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
