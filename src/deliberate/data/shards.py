"""Reading a pool's files with bounded memory: pool.json (checked with the folder's entries),
manifest lines (at most MAX_ROW_BYTES each) and shards, whose npy headers are checked against
the pool and against the bytes the archive holds before an array is allocated; then members are
read, or the images memory-mapped in place (a compressed pool's encoded bytes, decoded per image:
deliberate.data.codecs). And the pool's images as one lazy array over its shards
(`Pool.images_view`), so a pool never needs to fit in RAM."""

from __future__ import annotations

import errno
import json
import math
import os
import resource
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from deliberate.data.codecs import MEMBERS, EncodedImages, PoolSettings, check_offsets, codec_of
from deliberate.data.files import (
    _dumps,
    _one_line,
    atomic_file,
    check_folder,
    check_regular,
    read_inside,
)
from deliberate.errors import DeliberateError

FORMAT, VERSION = "deliberate-pool", 1
COMPRESSED_VERSION = 2  # a pool with a codec: a reader that predates codecs refuses it, not its shards

MAX_IMAGES = 10**7  # ids per shard: far above any batch (generate writes 250 by default)
MAX_ROW_BYTES = 2**20  # one manifest row (a shard's `rows` and a line of manifest.jsonl)
DEFLATE_RATIO = 1032  # deflate never expands data by more than this (zlib's hard limit)


def _map_limit() -> int:
    """Shards one images view keeps mapped. Each map holds a file descriptor and a memory area,
    and a pool of generator-batch shards (32 images each at ImageNet scale) has tens of thousands:
    a quarter of the soft open-file limit, at most 16,384 (Linux allows 65,530 maps a process)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 16_384 if soft == resource.RLIM_INFINITY else max(64, min(soft // 4, 16_384))


MAX_MAPS = _map_limit()
_LAYOUTS: dict[tuple, tuple] = {}  # a checked shard file's identity -> where its images lie


class Damaged(ValueError):
    """A shard whose bytes are not what a pool writes; the message says how (one line)."""


LOAD_ERRORS = (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile, zlib.error)
NOT_DAMAGE = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)  # the system's limits, not the shard's


def _why(e: BaseException) -> str:
    """A load error as the reason in one line: a Damaged shard says it plainly."""
    return str(e) if isinstance(e, Damaged) else _one_line(e)


def corrupt_shard(root: Path, name: str, why: str | BaseException) -> DeliberateError:
    """A shard's load error in one line with the fix; one that is the system's limit (file
    descriptors, memory) is not damage, and says so."""
    if isinstance(why, OSError) and why.errno in NOT_DAMAGE:
        return DeliberateError(
            f"pool at {root}: cannot read {name} ({_one_line(why)}); the shard is not damaged: "
            "raise the open-file limit (ulimit -n) or free memory and re-run"
        )
    why = why if isinstance(why, str) else _why(why)
    later = (root / "shards" / f"shard-{int(name[6:-4]) + 1:06d}.npz").exists()
    return DeliberateError(
        f"pool at {root} is damaged: shard {name} is corrupt ({why}); "
        f"delete it{' and every later shard' if later else ''} and re-run"
    )


def _header(z: zipfile.ZipFile, size: int, member: str):
    """(zip info, shape, fortran, dtype, data start in the member) of one .npy member, refused
    unless its header claims exactly the bytes the archive holds for it."""
    info = z.getinfo(member)
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size or info.header_offset + info.file_size > size:
            raise Damaged(f"{member} claims {info.file_size:,} bytes, more than the file holds")
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        if info.file_size > DEFLATE_RATIO * info.compress_size + 2**16:
            raise Damaged(f"{member} claims {info.file_size:,} bytes from {info.compress_size:,}")
    else:
        raise Damaged(f"{member} is compressed with zip method {info.compress_type}")
    fmt = np.lib.format
    with z.open(info) as m:
        version = fmt.read_magic(m)
        if version not in ((1, 0), (2, 0)):
            raise Damaged(f"{member} is .npy version {version}, not 1.0 or 2.0")
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(m)
        start = m.tell()
    if dtype.hasobject:
        raise Damaged(f"{member} holds Python objects, which are never loaded")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed != info.file_size - start:
        raise Damaged(
            f"{member}'s header claims {dtype} {shape} ({claimed:,} bytes) but it holds "
            f"{info.file_size - start:,} bytes"
        )
    return info, shape, fortran, dtype, start


def _check_layout(heads: dict, image_shape: tuple | None) -> int:
    """Refuse headers that disagree with each other or with the pool; the number of images."""
    ids = heads["ids"][1]
    if len(ids) != 1 or not 0 < ids[0] <= MAX_IMAGES:
        raise Damaged(f"its ids header claims shape {ids}; a shard holds 1..{MAX_IMAGES:,} ids")
    n = ids[0]
    for member, (_, shape, _, dtype, _) in heads.items():
        if member == "rows":  # the shard's manifest rows, as JSON bytes
            ok, want = len(shape) == 1 and shape[0] <= n * MAX_ROW_BYTES, f"at most {n} rows"
        elif member == "encoded":  # every image's file, concatenated (deliberate.data.codecs)
            ok, want = len(shape) == 1, "(total bytes,)"
        elif member == "offsets":
            ok, want = shape == (n + 1,), (n + 1,)
        elif member == "images":
            want = (n, *image_shape) if image_shape else f"({n}, H, W[, C])"
            ok = shape == want if image_shape else len(shape) in (3, 4) and shape[0] == n
        else:
            ok, want = shape == (n,), (n,)
        if not ok:
            holds = f"; the pool holds {image_shape} images" if member == "images" else ""
            raise Damaged(f"its {member} are {shape}, not {want}{holds}")
        if dtype != np.uint8 if member in ("images", "rows", "encoded") else dtype.kind not in "iu":
            raise Damaged(f"its {member} are {dtype}, not what a pool writes")
    return n


def _members(f: IO, names: tuple[str, ...], image_shape) -> tuple[zipfile.ZipFile, dict, int]:
    """The open archive, the checked headers of its members `names`, and its image count."""
    size = os.fstat(f.fileno()).st_size
    z = zipfile.ZipFile(f)
    heads = {m: _header(z, size, f"{m}.npy") for m in names}
    return z, heads, _check_layout(heads, image_shape)


def read_npz(f: IO) -> dict[str, np.ndarray]:
    """Every array of an open .npz file (twins, exports), each header checked against the bytes
    the archive holds before it is read: a hostile header costs no allocation."""
    size = os.fstat(f.fileno()).st_size
    with zipfile.ZipFile(f) as z:
        heads = {m[:-4]: _header(z, size, m) for m in z.namelist() if m.endswith(".npy")}
        out = {}
        for m, (info, *_) in heads.items():
            with z.open(info) as member:
                out[m] = np.lib.format.read_array(member, allow_pickle=False)
    return out


def read_shard(f: IO, image_shape: tuple | None, images: bool = True, num_classes=None,
               codec: PoolSettings | None = None):  # fmt: skip
    """(images or None, ids, labels, rows) of an open shard file, headers checked first; a
    compressed pool's images are decoded (after their offsets and CRCs are checked)."""
    raw = codec is None or codec.codec == "raw"
    names = ("ids", "labels", "rows", *((("images",) if raw else MEMBERS) if images else ()))
    z, heads, n = _members(f, names, image_shape)
    with z:
        arrays = {}
        for m, (info, *_) in heads.items():
            with z.open(info) as member:
                arrays[m] = np.lib.format.read_array(member, allow_pickle=False)
    labels = arrays["labels"].astype(np.int64)
    if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
        raise Damaged(f"its labels leave 0..{(num_classes or 1) - 1}")
    rows = json.loads(bytes(arrays["rows"]).decode())
    if not (isinstance(rows, list) and len(rows) == n and all(isinstance(r, dict) for r in rows)):
        raise Damaged(f"its rows are not {n} JSON objects")
    if images and not raw:
        arrays["images"] = _decode_all(arrays, n, image_shape, codec)
    return arrays.get("images"), arrays["ids"].astype(np.int64), labels, rows


def _decode_all(arrays: dict, n: int, image_shape, codec: PoolSettings) -> np.ndarray:
    """Every image of a compressed shard, decoded; damage -> Damaged (one line)."""
    encoded, offsets, crc = (arrays[m] for m in MEMBERS)
    if (why := check_offsets(offsets, crc, len(encoded), n)) is not None:
        raise Damaged(why)
    images = EncodedImages(encoded, offsets, crc, image_shape, codec, Damaged)
    return images[np.arange(n)]


def memmap_images(f: IO, image_shape: tuple, codec: PoolSettings | None = None,
                  fail=Damaged) -> np.ndarray | EncodedImages:  # fmt: skip
    """A shard's images memory-mapped in place (read whole when zip-compressed), headers checked;
    for a compressed pool, its encoded bytes memory-mapped and decoded per image when indexed
    (`fail(why)`: the error for a damaged image)."""
    if codec is None or codec.codec == "raw":
        return _memmap(f, "images", ("ids", "images"), image_shape)
    encoded = _memmap(f, "encoded", ("ids", *MEMBERS), image_shape)
    z, heads, n = _members(f, ("ids", *MEMBERS[1:]), image_shape)
    with z, z.open(heads["offsets"][0]) as a, z.open(heads["crc32"][0]) as b:
        offsets, crc = (np.lib.format.read_array(m, allow_pickle=False) for m in (a, b))
    if (why := check_offsets(offsets, crc, len(encoded), n)) is not None:
        raise Damaged(why)
    return EncodedImages(encoded, offsets, crc, image_shape, codec, fail)


def _memmap(f: IO, member: str, names: tuple[str, ...], image_shape) -> np.ndarray:
    """Member `member` memory-mapped in place, the headers of `names` checked first.

    `np.savez` stores members uncompressed (ZIP_STORED): the member's bytes are a plain .npy
    file at a fixed offset, after the zip local header whose name and extra lengths vary. That
    offset is remembered per file (device, inode, size, mtime), so mapping a shard again, once
    a view has dropped it, skips the archive's parsing: shards are never rewritten in place.
    """
    st = os.fstat(f.fileno())
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, member, tuple(image_shape))
    if key in _LAYOUTS:
        return np.memmap(f, *_LAYOUTS[key])
    z, heads, _ = _members(f, names, image_shape)
    info, shape, fortran, dtype, start = heads[member]
    with z:
        if info.compress_type != zipfile.ZIP_STORED:  # a compressed shard (written by hand)
            with z.open(info) as member:
                return np.lib.format.read_array(member, allow_pickle=False)
    f.seek(info.header_offset)
    local = f.read(30)  # the fixed part of the local file header
    if local[:4] != b"PK\x03\x04":
        raise Damaged(f"{member}.npy has no local zip header where the directory says")
    name_len, extra_len = (int.from_bytes(local[i : i + 2], "little") for i in (26, 28))
    offset = info.header_offset + 30 + name_len + extra_len + start
    layout = (dtype, "r", offset, shape, "F" if fortran else "C")
    if len(_LAYOUTS) >= 2**20:  # ~100 B each: a bound, far above any pool's shard count
        _LAYOUTS.clear()
    _LAYOUTS[key] = layout
    return np.memmap(f, *layout)


def write_header(root: Path, meta: dict) -> None:
    """Write root/pool.json (format, version, meta) atomically: its presence marks a pool."""
    version = COMPRESSED_VERSION if "codec" in meta else VERSION
    header = {"format": FORMAT, "version": version, "meta": meta}
    with atomic_file(root / "pool.json") as f:
        f.write((_dumps(header, indent=1) + "\n").encode())


def read_header(root: Path) -> dict:
    """Check the pool folder's entries (regular files and folders only); pool.json's meta."""
    path, err = root / "pool.json", f"pool at {root}:"
    if not check_regular(path):
        raise DeliberateError(
            f"{root} is not a pool directory (no pool.json); create one with Pool.create"
        )
    for name in ("manifest.jsonl", ".lock", *(p.name for p in root.glob(".*.tmp"))):
        check_regular(root / name)
    for folder in (root / "shards", root / "staging", root / "columns"):
        if check_folder(folder):
            for entry in os.scandir(folder):
                check_regular(entry.path)
    try:
        header = json.loads(read_inside(root, "pool.json", MAX_ROW_BYTES))
    except (OSError, ValueError) as e:
        raise DeliberateError(f"{err} pool.json is unreadable ({_one_line(e)}); restore it") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DeliberateError(f"{path} is not a deliberate pool header; check the path")
    if header.get("version") not in (VERSION, COMPRESSED_VERSION):
        raise DeliberateError(
            f"{err} format version {header.get('version')} is not {VERSION} or "
            f"{COMPRESSED_VERSION}; upgrade"
        )
    if not isinstance(header.get("meta"), dict):
        raise DeliberateError(f"{err} pool.json holds no meta mapping; restore it")
    meta = check_meta(header["meta"], root)
    if (header["version"] == COMPRESSED_VERSION) != ("codec" in meta):
        raise DeliberateError(f"{err} pool.json's version and codec disagree; restore it")
    return meta


def row_too_long(root: Path, line: int) -> DeliberateError:
    """The one line for a manifest line over MAX_ROW_BYTES (no row is near that)."""
    return DeliberateError(
        f"pool at {root} is damaged: manifest.jsonl line {line} is over {MAX_ROW_BYTES:,} "
        "bytes, which no row is; delete manifest.jsonl (every shard holds its rows) and re-run"
    )


def rows_disagree(root: Path, name: str) -> DeliberateError:
    """The one line for manifest rows that differ from the shard's own copy of them."""
    return DeliberateError(
        f"pool at {root} is damaged: manifest.jsonl disagrees with {name}'s own rows; delete "
        "manifest.jsonl (every shard holds its rows) and re-run"
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_)


def check_meta(meta: Mapping[str, Any], root: Path) -> dict:
    """Validate pool meta (image_shape, class_names, num_classes, codec, quality) and return it
    as plain JSON, the codec in its one form (raw: no key, so raw pools are as they always were)."""
    where = f"pool meta for {root}"
    try:
        meta = json.loads(_dumps(dict(meta)))
    except (TypeError, ValueError) as e:
        raise DeliberateError(f"{where} is not JSON-serialisable ({_one_line(e)})") from e
    shape, names = meta.get("image_shape"), meta.get("class_names")
    shape_ok = isinstance(shape, list) and len(shape) in (2, 3)
    if shape is not None and not (shape_ok and all(_is_int(s) and s > 0 for s in shape)):
        raise DeliberateError(f"{where}: image_shape must be [H, W] or [H, W, C], got {shape!r}")
    if names is not None and not (isinstance(names, list) and all(type(s) is str for s in names)):
        raise DeliberateError(f"{where}: class_names must be a list of strings")
    n = meta.get("num_classes")
    if n is not None and (not isinstance(n, int) or n <= 0 or (names and n != len(names))):
        raise DeliberateError(f"{where}: num_classes={n!r} must be positive and match class_names")
    codec = codec_of(meta, where)
    return {**{k: v for k, v in meta.items() if k not in ("codec", "quality")}, **codec.meta()}


class PoolImages:
    """A pool's images by id, as a read-only lazy array (see `Pool.images_view`).

    `load(name, count)` returns shard `name`'s images (memory-mapped), refusing a shard that
    does not hold `count` of them. At most MAX_MAPS shards stay mapped (the least recently read
    is unmapped first), so a pool of any shard count stays under the open-file limit."""

    def __init__(self, shards: list[tuple[str, int, int]], n: int, shape,
                 load: Callable[[str, int], np.ndarray]):  # fmt: skip
        self._shards, self._n, self.shape = shards, n, (n, *shape)
        self._firsts = np.array([first for _, first, _ in shards], np.int64)
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()  # least recently read first
        self._load = load
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self._n

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": OrderedDict()}  # a map would pickle as a copy

    def _shard(self, j: int) -> np.ndarray:
        if j in self._maps:
            self._maps.move_to_end(j)
        else:
            name, _, count = self._shards[j]
            self._maps[j] = self._load(name, count)
            if len(self._maps) > MAX_MAPS:
                self._maps.popitem(last=False)  # its file closes with its last reference
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
