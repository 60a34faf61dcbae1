"""Pool codecs: bytes per image on disk, and encode / decode throughput per core.

Usage: OMP_NUM_THREADS=1 python benchmarks/pool_codecs.py [--images 64] [--repeats 5]

Each codec writes the same images into a real pool (shards of 32 images, by `Pool.append`) and
reads them back through `Pool.images_view()`, the path training and the DataLoader workers take.
Bytes per image are the shard files' size over the image count (offsets, CRCs, ids, labels, rows
and zip overhead included). Encode is `PoolSettings.members` (what `append` does before it
writes; raw has nothing to encode); decode is the read through the view (memory map, CRC check,
decode; raw: a copy out of the memory map). Throughput is images per CPU second of this one
thread (`time.thread_time`: other processes on the machine do not count), the median over
`--repeats`. PSNR and the max abs difference compare the decoded pixels with the originals.

Image sets:
* photo 256² RGB: random crops of matplotlib's sample photo (grace_hopper.jpg, 600x512, itself
  a JPEG), each first rescaled by a random factor in [0.5, 0.95] so that crops are at 256² and
  the source's 8x8 JPEG grid is not aligned with the encoder's.
* synthetic 256² RGB: smooth natural-like images: 1/f noise (random noise at 4² ... 256²,
  bicubic-upsampled, amplitude ~ 1/frequency), a colour gradient and a few hard-edged shapes.
* Fashion-MNIST 28² grey: the first real test images, from the project's loader.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

from deliberate.data.codecs import PoolSettings
from deliberate.data.pool import Pool

CODECS = [("raw", 90), ("png", 90), ("jpeg", 90), ("jpeg", 75), ("webp", 90), ("webp", 75)]
SHARD = 32


def photo_crops(n: int, seed: int = 0) -> np.ndarray:
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    photo = Image.open(path).convert("RGB")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = rng.uniform(0.5, 0.95)
        w, h = round(photo.width * s), round(photo.height * s)
        im = photo.resize((w, h), Image.Resampling.LANCZOS)
        x, y = rng.integers(0, w - 255), rng.integers(0, h - 255)
        crop = np.asarray(im.crop((x, y, x + 256, y + 256)))
        out.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return np.stack(out)


def synthetic(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = np.zeros((256, 256, 3))
        for side in (4, 8, 16, 32, 64, 128, 256):
            noise = rng.standard_normal((side, side, 3)).astype(np.float32)
            up = [np.asarray(Image.fromarray(noise[:, :, c], mode="F").resize(
                (256, 256), Image.Resampling.BICUBIC)) for c in range(3)]  # fmt: skip
            img += np.stack(up, -1) * (4.0 / side)
        yy, xx = np.mgrid[0:256, 0:256] / 255.0
        img += (rng.uniform(-1, 1, 3) * yy[..., None] + rng.uniform(-1, 1, 3) * xx[..., None])
        img = (img - img.min()) / (img.max() - img.min()) * 200 + 28
        pil = Image.fromarray(img.astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        for _ in range(rng.integers(2, 6)):
            x0, y0 = rng.integers(0, 200, 2)
            x1, y1 = x0 + rng.integers(20, 120), y0 + rng.integers(20, 120)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
        out.append(np.asarray(pil))
    return np.stack(out)


def fashion_mnist(n: int) -> np.ndarray:
    from deliberate.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist().test_images[:n]


def cpu_seconds(fn) -> float:
    t0 = time.thread_time()
    fn()
    return time.thread_time() - t0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def measure(images: np.ndarray, codec: str, quality: int, repeats: int, tmp: Path) -> dict:
    settings = PoolSettings(codec, quality)
    n = len(images)
    root = tmp / f"{codec}-{quality}"
    pool = Pool.create(root, {"image_shape": list(images.shape[1:]), "num_classes": 1,
                              **settings.meta()})  # fmt: skip
    for i in range(0, n, SHARD):
        pool.append(images[i : i + SHARD], [{"label": 0, "seed": j} for j in range(i, min(i + SHARD, n))])
    size = sum(p.stat().st_size for p in (root / "shards").glob("*.npz"))

    def encode():
        for i in range(0, n, SHARD):
            settings.members(images[i : i + SHARD])

    enc, dec, out = [], [], {}
    for _ in range(repeats):
        enc.append(n / cpu_seconds(encode))
        view = Pool(root).images_view()  # fresh: no shard opened yet
        dec.append(n / cpu_seconds(lambda view=view: out.update(x=view[np.arange(n)])))
    return {
        "bytes": size / n,
        "encode": statistics.median(enc) if codec != "raw" else None,
        "decode": statistics.median(dec),
        "psnr": psnr(images, out["x"]),
        "maxdiff": int(np.abs(images.astype(int) - out["x"].astype(int)).max()),
    }


def table(name: str, images: np.ndarray, repeats: int) -> None:
    raw = int(np.prod(images.shape[1:]))
    print(f"\n### {name}: {len(images)} images {images.shape[1:]}, {repeats} repeats\n")
    print("| codec | bytes/image | vs raw | encode img/s/core | decode img/s/core | PSNR dB | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as d:
        for codec, q in CODECS:
            m = measure(images, codec, q, repeats, Path(d))
            label = f"{codec} q{q}" if codec in ("jpeg", "webp") else codec
            encode = "—" if m["encode"] is None else f"{m['encode']:,.0f}"
            print(f"| {label} | {m['bytes']:,.0f} | {m['bytes'] / raw:.3f} | {encode} | "
                  f"{m['decode']:,.0f} | {m['psnr']:.1f} | {m['maxdiff']} |", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="256² images per set")
    ap.add_argument("--fmnist", type=int, default=1024, help="Fashion-MNIST images")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    table("photo crops 256² RGB", photo_crops(args.images), args.repeats)
    table("synthetic 256² RGB", synthetic(args.images), args.repeats)
    table("Fashion-MNIST 28² grey", fashion_mnist(args.fmnist), args.repeats)


if __name__ == "__main__":
    main()
