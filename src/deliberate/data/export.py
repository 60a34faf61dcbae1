"""Export a pool to formats other tools read as they are: one .npz file, an ImageFolder tree of
PNGs, a Hugging Face `datasets` folder, or WebDataset tar shards.

Exports never destroy data: an existing target is refused unless `force`, a target inside the
pool is always refused, and the result is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import itertools
import os
import shutil
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from deliberate.data.files import _dumps, _fsync_dir, atomic_file
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError

# Manifest columns carried by the npz and hf exports, when the pool's rows have them.
COLUMNS = {"seed": np.int64, "round": np.int64, "omega": np.float64, "entropy": np.float64,
           "learner_pred": np.int64, "guidance_skipped": np.int64, "fingerprint": str, "guide": str}  # fmt: skip
SHARD_SIZE = 10_000  # samples per WebDataset tar shard


def _missing(kind: type) -> object:
    """What a column holds where a row lacks it: '' for text, NaN for floats, -1 for integers."""
    return "" if kind is str else (np.nan if kind is np.float64 else -1)


def _present(pool: Pool) -> list[str]:
    """The COLUMNS that at least one manifest row has, in COLUMNS order."""
    return [key for key in COLUMNS if key in pool.present_columns()]


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
        for key in _present(pool):  # the pool's columns hold -1 / NaN / '' where a row lacks one
            arrays[key] = pool.column(key).astype(COLUMNS[key])
        for name, array in arrays.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return out_path


def _label_names(pool: Pool, class_names: Sequence[str] | None) -> list[str]:
    """One name per label: the given ones, else the pool's, else '0', '1', ... (no meta names).

    Names are written one per line (classes.txt), so a name may not be empty or hold a newline.
    """
    num_classes = max(pool.num_classes or 0, int(pool.labels().max()) + 1)
    given = class_names if class_names is not None else pool.class_names
    names = [str(c) for c in (range(num_classes) if given is None else given)]
    if len(names) < num_classes:
        raise DeliberateError(
            f"pool at {pool.root} has {num_classes} classes but {len(names)} class names were "
            "given; pass one name per class"
        )
    if bad := [c for c in names if not c.strip() or "\n" in c or "\r" in c]:
        raise DeliberateError(f"class name {bad[0]!r} cannot be a label name; rename that class")
    return names


def _folder_names(names: Sequence[str]) -> list[str]:
    """One folder per class whose sorted order is the label order: '00_T-shirt_top', '01_Trouser'.

    torchvision's ImageFolder numbers classes by sorted folder name, so the label prefix makes
    its indices the pool's labels; the rest is the class name made safe for a path.
    """
    names = [c.replace("/", "_").replace("\\", "_").strip() for c in names]
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


def _png(image: np.ndarray) -> bytes:
    """The image as PNG file bytes (lossless, so readers get the pool's pixels back)."""
    buf = io.BytesIO()
    _to_pil(image).save(buf, format="PNG")
    return buf.getvalue()


@contextlib.contextmanager
def _staged_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder path beside `out_dir` (not yet created) that replaces `out_dir`
    when the block succeeds; on failure nothing under the final name changes."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # leftovers of an earlier, killed export
    try:
        yield tmp
        if out_dir.is_dir() and any(out_dir.iterdir()):  # --force: the old tree goes last
            old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:  # rename(2) replaces an empty directory, so an empty out_dir is fine too
            os.replace(tmp, out_dir)
        _fsync_dir(out_dir.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    names = _folder_names(_label_names(pool, class_names))
    out_dir = check_target(pool, out_dir, force=force, folder=True)
    with _staged_dir(out_dir) as tmp:
        for name in names:
            (tmp / name).mkdir(parents=True)
        for images, labels, records in pool.iter_shards():
            for image, label, record in zip(images, labels, records, strict=True):
                _to_pil(image).save(tmp / names[label] / f"{record['id']:07d}.png")
        (tmp / "classes.txt").write_text("".join(f"{name}\n" for name in names))
    return out_dir


def _require(module: str, extra: str):
    """Import an optional library, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DeliberateError(
            f"this export needs the {module} library; pip install 'deliberate[{extra}]'"
        ) from e


def _hf_rows(pool: Pool, columns: list[str]) -> Iterator[dict]:
    """One `datasets` example per image, shard by shard (the generator `export_hf` streams)."""
    for images, labels, records in pool.iter_shards():
        for image, label, row in zip(images, labels, records, strict=True):
            extra = {key: row.get(key, _missing(COLUMNS[key])) for key in columns}
            yield {"image": {"bytes": _png(image), "path": None}, "label": int(label),
                   "id": row["id"], **extra}  # fmt: skip


def export_hf(
    pool: Pool, out_dir: str | Path, class_names: Sequence[str] | None = None, *,
    force: bool = False, max_shard_size: str | int = "500MB",
) -> Path:
    """Write a Hugging Face `datasets` folder that `datasets.load_from_disk(out_dir)` reads.

    Features: `image` (`datasets.Image`, lossless PNG), `label` (`datasets.ClassLabel` whose names
    are the class names in label order; a repeated name gets its label appended, 'crane_134',
    because ClassLabel names must be unique), `id`, and the COLUMNS the manifest rows have
    (NaN / -1 / '' where a row lacks one). Rows are generated shard by shard into an Arrow
    cache inside a temporary folder beside `out_dir`, saved there, and renamed into place.
    """
    datasets = _require("datasets", "hf")
    _to_pil(np.zeros(_image_shape(pool), np.uint8))  # refuse unsupported channel counts early
    names = _label_names(pool, class_names)
    names = [f"{c}_{i}" if names.count(c) > 1 else c for i, c in enumerate(names)]
    columns = _present(pool)
    kinds = {np.int64: "int64", np.float64: "float64", str: "string"}
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names),
         "id": datasets.Value("int64"),
         **{key: datasets.Value(kinds[COLUMNS[key]]) for key in columns}}
    )  # fmt: skip
    out_dir = check_target(pool, out_dir, force=force, folder=True)
    with _staged_dir(out_dir) as tmp:
        cache = tmp / "arrow-cache"  # removed before the rename; load_from_disk never sees it
        # A partial, not gen_kwargs: datasets would split a list in gen_kwargs into shards.
        rows = functools.partial(_hf_rows, pool, columns)
        data = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(cache))
        data.save_to_disk(str(tmp), max_shard_size=max_shard_size)
        del data  # let go of the cache's memory maps before deleting it
        shutil.rmtree(cache)
    return out_dir


def export_webdataset(
    pool: Pool, out_dir: str | Path, class_names: Sequence[str] | None = None, *,
    force: bool = False, shard_size: int = SHARD_SIZE,
) -> Path:
    """Write WebDataset tar shards `out_dir/pool-000000.tar`, ... of at most `shard_size` samples.

    Each sample is `KEY.png` (lossless), `KEY.cls` (the label as ASCII digits) and `KEY.json`
    (the manifest row), KEY the zero-padded id, in id order; `out_dir/classes.txt` holds one
    class name per label. Shards are written with `tarfile` into a temporary folder beside
    `out_dir` and renamed into place together; the `webdataset` library is needed only to read.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise DeliberateError(f"shard_size={shard_size!r} must be a positive number of samples")
    _to_pil(np.zeros(_image_shape(pool), np.uint8))  # refuse unsupported channel counts early
    names = _label_names(pool, class_names)
    out_dir = check_target(pool, out_dir, force=force, folder=True)
    samples = _wds_samples(pool)
    with _staged_dir(out_dir) as tmp:
        tmp.mkdir()
        for j in itertools.count():
            if (first := next(samples, None)) is None:
                break
            with (atomic_file(tmp / f"pool-{j:06d}.tar") as f,
                  tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar):  # fmt: skip
                rest = itertools.islice(samples, shard_size - 1)  # lazily: one image at a time
                for name, data in itertools.chain(first, itertools.chain.from_iterable(rest)):
                    info = tarfile.TarInfo(name)
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
        (tmp / "classes.txt").write_text("".join(f"{name}\n" for name in names))
    return out_dir


def _wds_samples(pool: Pool) -> Iterator[list[tuple[str, bytes]]]:
    """Per image, in id order, its WebDataset files: KEY.png, KEY.cls, KEY.json."""
    for images, labels, records in pool.iter_shards():
        for image, label, row in zip(images, labels, records, strict=True):
            key = f"{row['id']:07d}"
            yield [(f"{key}.png", _png(image)), (f"{key}.cls", str(int(label)).encode()),
                   (f"{key}.json", _dumps(row).encode())]  # fmt: skip
