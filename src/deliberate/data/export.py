"""Export a pool to formats any other tool reads: one .npz file, or an ImageFolder tree of PNGs.

Exports never destroy data: an existing target is refused unless `force`, a target inside the
pool is always refused, and the result is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from deliberate.data.files import atomic_file
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError

# Manifest columns carried by the npz export, when the pool's rows have them.
COLUMNS = {"seed": np.int64, "round": np.int64, "omega": np.float64, "entropy": np.float64,
           "learner_pred": np.int64, "guidance_skipped": np.int64, "fingerprint": str}  # fmt: skip


def check_target(pool: Pool, out: str | Path, *, force: bool = False, folder: bool) -> Path:
    """Refuse an export target inside the pool, or one that exists (unless `force`)."""
    out = Path(out)
    resolved, root = out.resolve(), pool.root.resolve()
    if resolved == root or root in resolved.parents:
        raise DeliberateError(f"--out {out} is inside the pool {pool.root}; export elsewhere")
    if out.is_symlink():
        raise DeliberateError(f"--out {out} is a symlink; give a plain path")
    if out.exists():
        if folder and out.is_dir() and not any(out.iterdir()):
            return out  # an empty folder is a fine target
        if not force:
            raise DeliberateError(f"--out {out} exists; pass --force to replace it, or pick another")
        if out.is_dir() != folder:
            kind = "a folder" if out.is_dir() else "a file"
            raise DeliberateError(f"--out {out} is {kind}; --force replaces only its own kind")
    return out


def _image_shape(pool: Pool) -> tuple[int, ...]:
    """Return the pool's image shape, refusing an empty pool (there is nothing to export)."""
    if len(pool) == 0 or pool.image_shape is None:
        raise DeliberateError(f"pool at {pool.root} is empty; append images before exporting")
    return pool.image_shape


def export_npz(pool: Pool, out_path: str | Path, *, force: bool = False) -> Path:
    """Write `images` (uint8), `labels` (int64), `ids` (int64) and the manifest columns the pool
    has (seed, round, omega, entropy, learner_pred, guidance_skipped: NaN / -1 where a row lacks
    one; fingerprint: '' where absent) to one .npz, atomically.

    The images are streamed shard by shard into the archive member, so the pool is never held in
    memory; `np.load(out_path)` reads the result like any `np.savez` file.
    """
    shape, n = _image_shape(pool), len(pool)
    out_path = check_target(pool, out_path, force=force, folder=False)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    records = pool.records()
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
        arrays = {"labels": pool.labels(), "ids": np.arange(n, dtype=np.int64)}
        for key, kind in COLUMNS.items():
            if any(key in r for r in records):
                missing = "" if kind is str else (np.nan if kind is np.float64 else -1)
                arrays[key] = np.array([r.get(key, missing) for r in records], dtype=kind)
        for name, array in arrays.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return out_path


def _folder_names(class_names: Sequence[str], num_classes: int, root: Path) -> list[str]:
    """One folder per class whose sorted order is the label order: '00_T-shirt_top', '01_Trouser'.

    torchvision's ImageFolder numbers classes by sorted folder name, so the label prefix makes
    its indices the pool's labels; the rest is the class name made safe for a path.
    """
    names = [str(c).replace("/", "_").replace("\\", "_").strip() for c in class_names]
    if len(names) < num_classes:
        raise DeliberateError(
            f"pool at {root} has {num_classes} classes but {len(names)} class names were given; "
            "pass one name per class"
        )
    bad = [c for c in names if c in ("", ".", "..") or "\0" in c]
    if bad:
        raise DeliberateError(f"class name {bad[0]!r} cannot be a folder name; rename that class")
    width = len(str(len(names) - 1))
    return [f"{i:0{width}d}_{name}" for i, name in enumerate(names)]


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
    pool: Pool, out_dir: str | Path, class_names: Sequence[str] | None = None, *,
    force: bool = False,
) -> Path:
    """Write `out_dir/<label>_<class name>/<id:07d>.png` for every image, as ImageFolder readers
    expect: the folders sort in label order, so torchvision's ImageFolder gives each image its
    pool label. `out_dir/classes.txt` lists the folder names, one per label.

    The tree is built beside `out_dir` under a temporary name and renamed into place, so a crash
    never leaves a half-exported folder under the final name.
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
    out_dir = check_target(pool, out_dir, force=force, folder=True)
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
        if out_dir.is_dir() and any(out_dir.iterdir()):  # --force: the old tree goes last
            old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:  # rename(2) replaces an empty directory, so an empty out_dir is fine too
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
