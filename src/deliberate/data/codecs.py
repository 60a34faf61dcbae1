"""How a pool stores its images: `raw` uint8 arrays (the default), or one encoded file per image.

A pool's codec is fixed when it is created and recorded in pool.json's meta (`codec`, and
`quality` for the lossy ones); a pool without the key is raw. A compressed shard holds, instead
of `images`, three members (uint8 and int64 only: shards load with allow_pickle=False):

    encoded  uint8 (total bytes,)  every image's file (PNG, JPEG or WebP), concatenated in id order
    offsets  int64 (n + 1,)        image i is encoded[offsets[i]:offsets[i + 1]]; 0 ... total
    crc32    int64 (n,)            zlib.crc32 of each image's bytes, checked before it is decoded

Every reader gets decoded uint8 arrays of the pool's image_shape. A decoder is handed an image's
bytes only after its CRC matches and its header states the pool's size and mode, so damaged or
hostile bytes cost one line, never a large allocation. Lossy codecs change pixels: the entropy a
round records is scored on `roundtrip(images)`, the pixels the learner will train on.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from deliberate.config import field
from deliberate.errors import DeliberateError

CODECS = ("raw", "png", "jpeg", "webp")
LOSSY = ("jpeg", "webp")
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}  # PIL's names
CHANNELS = {"raw": (1, 2, 3, 4), "png": (1, 3, 4), "jpeg": (1, 3), "webp": (1, 3, 4)}
MODES = {1: "L", 3: "RGB", 4: "RGBA"}
MEMBERS = ("encoded", "offsets", "crc32")


@dataclass
class PoolSettings:
    """How a new pool stores its images (the `pool:` section; a pool keeps the codec it has)."""

    codec: str = field(
        "raw",
        "raw: uint8 arrays, memory-mapped; png: lossless; jpeg, webp: lossy at `quality`, "
        "the recorded entropy scored on the decoded pixels (docs/exports.md, shard format)",
        choices=CODECS,
    )
    quality: int = field(90, "jpeg and webp quality, 1-100 (raw and png ignore it)", ge=1, le=100)

    @property
    def lossy(self) -> bool:
        return self.codec in LOSSY

    def meta(self) -> dict:
        """What pool.json records: nothing for raw (so raw pools are as they always were)."""
        if self.codec == "raw":
            return {}
        return {"codec": self.codec, **({"quality": self.quality} if self.lossy else {})}

    def check_shape(self, shape) -> None:
        """Refuse image shapes this codec cannot store, before anything is written."""
        c = 1 if len(shape) == 2 else shape[-1]
        if c not in CHANNELS[self.codec]:
            ok = [k for k in CODECS if c in CHANNELS[k]]
            raise DeliberateError(
                f"pool.codec {self.codec} cannot store {c}-channel images; use {' or '.join(ok)}"
            )

    def members(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """A shard's image members for (N, H, W[, C]) uint8 `images`."""
        if self.codec == "raw":
            return {"images": images}
        self.check_shape(images.shape[1:])
        files = [self._encode(image) for image in images]
        offsets = np.zeros(len(files) + 1, np.int64)
        offsets[1:] = np.cumsum([len(b) for b in files])
        encoded = np.frombuffer(b"".join(files), np.uint8)
        crc = np.array([zlib.crc32(b) for b in files], np.int64)
        return {"encoded": encoded, "offsets": offsets, "crc32": crc}

    def _encode(self, image: np.ndarray) -> bytes:
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]  # PIL's grey images have no channel axis
        buf = io.BytesIO()
        opts = {"quality": self.quality} if self.lossy else {}
        Image.fromarray(np.ascontiguousarray(image)).save(buf, format=FORMATS[self.codec], **opts)
        return buf.getvalue()

    def decode(self, data: bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray:
        """One image's bytes as uint8 pixels of `shape`; anything else -> ValueError (one line).

        The header is read first (PIL opens lazily): a size or mode that is not the pool's is
        refused before any pixel is decoded. WebP has no grey mode: a grey image comes back RGB
        and is converted to L (its three channels are equal up to rounding)."""
        h, w = shape[:2]
        c = 1 if len(shape) == 2 else shape[2]
        try:
            im = Image.open(io.BytesIO(data), formats=[FORMATS[self.codec]])
            if im.size != (w, h):
                raise ValueError(f"its header says {im.size[0]}x{im.size[1]}, the pool is {w}x{h}")
            want = MODES[c]
            if im.mode != want and not (self.codec == "webp" and c == 1 and im.mode == "RGB"):
                raise ValueError(f"its header says mode {im.mode}, the pool's images are {want}")
            im.load()
            pixels = np.asarray(im if im.mode == want else im.convert(want))
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            why = " ".join(str(e).split())
            raise ValueError(f"not a {w}x{h} {self.codec} image ({why})") from None
        return pixels.reshape(shape)

    def roundtrip(self, images: np.ndarray) -> np.ndarray:
        """What a reader of this pool gets back for `images` (lossless codecs: `images`)."""
        if not self.lossy:
            return images
        shape, m = tuple(images.shape[1:]), self.members(images)
        return np.stack([self.decode(b, shape) for b in split(m["encoded"], m["offsets"])])


def split(encoded: np.ndarray, offsets: np.ndarray) -> list[memoryview]:
    """Each image's bytes (checked offsets) as views into the shard's buffer."""
    view = memoryview(encoded)
    return [view[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]


def check_offsets(offsets: np.ndarray, crc: np.ndarray, total: int, n: int) -> str | None:
    """Why offsets (and CRCs) cannot cut `total` encoded bytes into n images, or None if they can."""
    if offsets.shape != (n + 1,) or crc.shape != (n,):
        return f"its offsets are {offsets.shape} and crc32 {crc.shape}, not ({n + 1},), ({n},)"
    if offsets.dtype != np.int64 or crc.dtype != np.int64:  # uint64 would wrap in the checks
        return f"its offsets are {offsets.dtype} and crc32 {crc.dtype}, not int64"
    if offsets[0] != 0 or offsets[-1] != total or (np.diff(offsets) <= 0).any():
        return f"its offsets do not cut its {total:,} encoded bytes into {n} images"
    if crc.min() < 0 or crc.max() >= 2**32:
        return "its crc32 values are not 32-bit checksums"
    return None


def codec_of(meta: Mapping[str, Any], where: str = "pool meta") -> PoolSettings:
    """The codec a pool's meta records (none: raw), refused (one line) unless valid."""
    codec, quality = meta.get("codec", "raw"), meta.get("quality", 90)
    if codec not in CODECS:
        raise DeliberateError(f"{where}: codec {codec!r} is not one of {', '.join(CODECS)}")
    ok = isinstance(quality, int) and not isinstance(quality, bool) and 1 <= quality <= 100
    if codec in LOSSY and not ok:
        raise DeliberateError(f"{where}: quality {quality!r} must be an int in 1..100")
    settings = PoolSettings(codec, quality if ok else 90)
    if meta.get("image_shape") is not None:
        settings.check_shape(meta["image_shape"])
    return settings


class EncodedImages:
    """A compressed shard's images as a lazy array: `view[i]` or `view[ids]` decodes only those.

    `encoded` may be a memory map of the shard's member; `fail(why)` makes the pool's one-line
    error for a damaged image. Decoding happens in whichever process indexes (DataLoader workers).
    """

    def __init__(self, encoded: np.ndarray, offsets: np.ndarray, crc: np.ndarray,
                 shape: tuple[int, ...], codec: PoolSettings,
                 fail: Callable[[str], Exception]):  # fmt: skip
        self._encoded, self._offsets, self._crc = encoded, offsets, crc
        self._image_shape, self._codec, self._fail = tuple(shape), codec, fail
        self.shape, self.dtype = (len(crc), *shape), np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self._crc)

    def image(self, i: int) -> np.ndarray:
        """Image i, decoded after its CRC is checked."""
        data = memoryview(self._encoded)[self._offsets[i] : self._offsets[i + 1]]
        if zlib.crc32(data) != self._crc[i]:
            raise self._fail(f"image {i}'s bytes fail their crc32 check")
        try:
            return self._codec.decode(data, self._image_shape)
        except ValueError as e:
            raise self._fail(f"image {i} is {e}") from None

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, int | np.integer):
            return self.image(range(len(self))[idx])  # negative ids as for arrays
        ids = np.arange(len(self))[idx].reshape(-1)  # slices, masks and id arrays
        out = np.empty((len(ids), *self._image_shape), np.uint8)
        for k, i in enumerate(ids.tolist()):
            out[k] = self.image(i)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)
