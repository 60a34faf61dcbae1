"""The synthetic pool: round trips, crash repair (simulated and a real SIGKILL), errors, export."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deliberate.data.export import export_imagefolder, export_npz
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError
from deliberate.report.grids import (
    CELL_PX,
    PAD_PX,
    PANEL_TITLE_PX,
    TITLE_PX,
    save_paired_grid,
    save_sample_grid,
)

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def batch(first: int, n: int, shape=(28, 28), seed: int = 0):
    """Random uint8 images with records whose fields are functions of the id they will get."""
    rng = np.random.default_rng(seed + first)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    records = [
        {"label": (first + i) % 5, "seed": np.int64(1000 + first + i), "round": 2,
         "omega": 0.1, "entropy": np.float32(0.25), "settings": {"steps": 4}}
        for i in range(n)
    ]  # fmt: skip
    return images, records


def filled(tmp: Path, sizes=(7, 1, 12), shape=(28, 28)):
    """A pool with one shard per size, and the images that went into it."""
    pool = Pool.create(tmp / "pool", {"class_names": NAMES, "generator": "test"})
    chunks = []
    for n in sizes:
        images, records = batch(len(pool), n, shape)
        pool.append(images, records)
        chunks.append(images)
    return pool, np.concatenate(chunks)


def check_consistent(root: Path) -> Pool:
    """Reopen the pool: every shard loads, the manifest matches the shards, ids are contiguous."""
    pool = Pool(root)
    assert pool.verify() == len(pool)
    assert [r["id"] for r in pool.records()] == list(range(len(pool)))
    assert not [p for p in root.rglob("*.tmp")]
    return pool


def test_round_trip_after_reopen(tmp_path):
    pool, images = filled(tmp_path)
    again = Pool(tmp_path / "pool")
    assert len(again) == 20 and again.shards == pool.shards and again.image_shape == (28, 28)
    got, labels = again.load_all()
    np.testing.assert_array_equal(got, images)
    assert labels.dtype == np.int64 and labels.tolist() == [i % 5 for i in range(20)]
    assert again.records() == pool.records()
    row = again.records()[8]
    assert row == {"id": 8, "label": 3, "seed": 1008, "shard": "shard-000002.npz", "index": 0,
                   "round": 2, "omega": 0.1, "entropy": 0.25, "settings": {"steps": 4}}  # fmt: skip
    shards = list(again.iter_shards())
    assert [len(s[0]) for s in shards] == [7, 1, 12]
    assert shards[2][2][0] == row and shards[1][1].tolist() == [7 % 5]
    sub, sub_labels = again.get([19, 0, 7, 7])
    np.testing.assert_array_equal(sub, images[[19, 0, 7, 7]])
    assert sub_labels.tolist() == [4, 0, 2, 2]


def test_ids_contiguous_across_appends_and_reopens(tmp_path):
    pool, _ = filled(tmp_path, (3, 4), shape=(8, 8, 3))
    other = Pool(tmp_path / "pool")  # a second handle sees the first one's appends
    assert pool.append(*batch(7, 2, (8, 8, 3))) == [7, 8]
    assert other.append(*batch(9, 1, (8, 8, 3))) == [9] and len(other) == 10
    assert pool.append(*batch(10, 2, (8, 8, 3))) == [10, 11]
    assert pool.append(np.zeros((0, 8, 8, 3), np.uint8), []) == []  # empty slice: no shard
    reopened = Pool.open_or_create(tmp_path / "pool", {"class_names": NAMES})
    assert reopened.append(*batch(12, 5, (8, 8, 3))) == list(range(12, 17))
    assert check_consistent(tmp_path / "pool").labels().tolist() == [i % 5 for i in range(17)]


def cut_manifest(root: Path, keep) -> None:
    data = (root / "manifest.jsonl").read_bytes()
    (root / "manifest.jsonl").write_bytes(keep(data))


DAMAGE = {
    # The writer died after renaming shard 2 but before any of its manifest rows were written.
    "rows missing": lambda r: cut_manifest(r, lambda d: b"".join(d.splitlines(True)[:8])),
    "some rows missing": lambda r: cut_manifest(r, lambda d: b"".join(d.splitlines(True)[:-3])),
    "truncated line": lambda r: cut_manifest(r, lambda d: d[:-17]),
    "garbage line": lambda r: cut_manifest(r, lambda d: d[:300] + b"\x00{garbage\n" + d[300:]),
    "manifest deleted": lambda r: (r / "manifest.jsonl").unlink(),
    "temp files left": lambda r: [
        (r / "shards" / ".shard-000003.npz.4242.tmp").write_bytes(b"PK\x03\x04half a shard"),
        (r / ".pool.json.4242.tmp").write_bytes(b"{"),
    ],
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_simulated_crash_is_repaired_on_open(tmp_path, damage):
    pool, images = filled(tmp_path)
    root, manifest = pool.root, (pool.root / "manifest.jsonl").read_bytes()
    DAMAGE[damage](root)
    repaired = check_consistent(root)
    assert (root / "manifest.jsonl").read_bytes() == manifest  # rebuilt byte for byte
    np.testing.assert_array_equal(repaired.load_all()[0], images)
    assert repaired.append(*batch(20, 2)) == [20, 21]


def test_crash_between_rename_and_manifest_write(tmp_path, monkeypatch):
    pool, _ = filled(tmp_path, (5, 5))

    def die(self, payload, torn):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Pool, "_write_rows", die)
    with pytest.raises(KeyboardInterrupt):
        pool.append(*batch(10, 4))
    monkeypatch.undo()
    repaired = check_consistent(pool.root)
    assert len(repaired) == 14 and repaired.records()[-1]["shard"] == "shard-000002.npz"


@pytest.mark.parametrize("shape", [(28, 28), (6, 5, 3)])
def test_images_view_reads_batches_from_memory_mapped_shards(tmp_path, shape):
    """Training's lazy view: the same pixels as load_all, by id, without loading the pool."""
    pool, images = filled(tmp_path, (7, 1, 12), shape)
    view = pool.images_view()
    ids = np.random.default_rng(0).integers(0, 20, 64)
    assert len(view) == 20 and np.array_equal(view[ids], images[ids])
    assert np.array_equal(view[np.arange(20)], pool.load_all()[0])
    assert np.array_equal(view[5:100], images[5:])  # slices too, clipped like numpy's
    assert all(isinstance(view._shard(j), np.memmap) for j in range(3))  # mapped, not read
    head = pool.images_view(limit=8)  # a branch-out trains on the first |D_k| images
    assert len(head) == 8 and np.array_equal(head[[7, 0]], images[[7, 0]])
    with pytest.raises(IndexError, match=r"out of range 0..7"):
        head[[8]]
    (pool.root / "shards" / "shard-000002.npz").write_bytes(b"PK\x03\x04")
    with pytest.raises(DeliberateError, match="shard-000002.npz is corrupt"):
        pool.images_view()[[19]]


def test_images_view_keeps_few_shards_mapped(tmp_path, monkeypatch):
    """Each mapped shard holds a file descriptor: a pool of more shards than MAX_MAPS (tens of
    thousands of generator batches at ImageNet scale) must not run out of them."""
    monkeypatch.setattr("deliberate.data.shards.MAX_MAPS", 3)
    pool, images = filled(tmp_path, (2,) * 8)
    view, fds = pool.images_view(), len(os.listdir("/proc/self/fd"))
    ids = np.random.default_rng(0).integers(0, 16, 200)
    assert np.array_equal(view[ids], images[ids])
    assert np.array_equal(view[np.arange(16)], images)
    assert len(view._maps) == 3 and list(view._maps) == [5, 6, 7]  # the most recently read
    assert len(os.listdir("/proc/self/fd")) <= fds + 3
    again = pool.images_view()  # shards mapped again from their remembered offsets
    assert np.array_equal(again[ids], images[ids]) and np.array_equal(again[::-1], images[::-1])


def test_the_map_limit_follows_the_open_file_limit(monkeypatch):
    import resource

    from deliberate.data import shards

    for soft, want in ((1024, 256), (100, 64), (2**20, 16_384), (resource.RLIM_INFINITY, 16_384)):
        monkeypatch.setattr(resource, "getrlimit", lambda _, soft=soft: (soft, soft))
        assert shards._map_limit() == want


def test_running_out_of_file_descriptors_is_not_called_damage(tmp_path, monkeypatch):
    pool, _ = filled(tmp_path, (3, 3))

    def emfile(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr("deliberate.data.pool.memmap_images", emfile)
    with pytest.raises(DeliberateError, match=r"shard is not damaged: raise the open-file limit"):
        pool.images_view()[[4]]


def test_damaged_shards_are_reported_with_the_fix(tmp_path):
    pool, _ = filled(tmp_path, (3, 3, 3))
    shards = pool.root / "shards"
    (shards / "shard-000001.npz").write_bytes(b"not a zip")
    with pytest.raises(DeliberateError, match=r"shard-000001.npz is corrupt .*every later shard"):
        Pool(pool.root).verify()
    (shards / "shard-000001.npz").unlink()
    with pytest.raises(DeliberateError, match="shard-000001.npz is missing but shard-000002"):
        Pool(pool.root)
    (shards / "shard-000002.npz").unlink()  # the advice: delete every shard after the gap
    assert len(check_consistent(pool.root)) == 3
    assert Pool(pool.root).append(*batch(3, 2)) == [3, 4]
    (shards / "shard-000001.npz").write_bytes(b"PK\x03\x04")  # last shard, garbage
    with pytest.raises(
        DeliberateError, match=r"shard-000001.npz is corrupt .*delete it and re-run"
    ):
        Pool(pool.root)
    (shards / "shard-000001.npz").unlink()
    assert Pool(pool.root).append(*batch(3, 4)) == [3, 4, 5, 6]
    assert len(check_consistent(pool.root)) == 7


CHILD = """
import sys, numpy as np
from deliberate.data.pool import Pool
pool = Pool.open_or_create(sys.argv[1], {"num_classes": 10})
print("ready", flush=True)
rng = np.random.default_rng(int(sys.argv[2]))
while True:
    first, n = len(pool), int(rng.integers(1, 400))
    ids = np.arange(first, first + n)
    images = np.broadcast_to((ids % 251).astype(np.uint8)[:, None, None], (n, 28, 28))
    pool.append(images.copy(), [{"label": int(i % 10), "seed": int(i) * 7} for i in ids])
"""


def test_sigkill_at_random_moments_leaves_a_consistent_pool(tmp_path):
    root, rnd, sizes = tmp_path / "pool", random.Random(0), []
    env = {**os.environ, "PYTHONPATH": SRC}
    for cycle in range(6):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(cycle)],
                                 stdout=subprocess.PIPE, env=env, text=True)  # fmt: skip
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.0, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        pool = check_consistent(root)
        sizes.append(len(pool))
        for images, labels, records in pool.iter_shards():
            ids = np.array([r["id"] for r in records])
            assert (images == (ids % 251).astype(np.uint8)[:, None, None]).all()
            assert labels.tolist() == (ids % 10).tolist()
            assert [r["seed"] for r in records] == (ids * 7).tolist()
    assert sizes == sorted(sizes) and sizes[-1] > 0


@pytest.mark.parametrize(
    "images, records, match",
    [
        (np.zeros((2, 28, 28), np.float32), [{"label": 0, "seed": 0}] * 2, "must be a uint8"),
        (np.zeros((28, 28), np.uint8), [{"label": 0, "seed": 0}], r"\(N,H,W\)"),
        (np.zeros((2, 28, 28), np.uint8), [{"label": 0, "seed": 0}], "2 images but 1 records"),
        (np.zeros((1, 28, 28), np.uint8), [{"label": 5, "seed": 0}], "label 5 outside 0..4"),
        (np.zeros((1, 28, 28), np.uint8), [{"seed": 0}], "needs an int 'label'"),
        (np.zeros((1, 28, 28), np.uint8), [{"label": 1, "seed": 0.5}], "needs an int 'seed'"),
        (np.zeros((1, 28, 28), np.uint8), [{"label": 1, "seed": 0, "id": 3}], "pool assigns"),
        (np.zeros((1, 28, 28), np.uint8), [{"label": 1, "seed": 0, "x": object()}], "JSON"),
        (np.zeros((1, 32, 32), np.uint8), [{"label": 1, "seed": 0}], r"\(32, 32\).*\(28, 28\)"),
    ],
)
def test_invalid_appends_raise_one_line_errors(tmp_path, images, records, match):
    pool, _ = filled(tmp_path, (2,))
    with pytest.raises(DeliberateError, match=match) as err:
        pool.append(images, records)
    assert "\n" not in str(err.value) and str(pool.root) in str(err.value)
    assert len(check_consistent(pool.root)) == 2  # nothing half-written


def test_invalid_pool_directories_and_ids(tmp_path):
    with pytest.raises(DeliberateError, match="not a pool directory"):
        Pool(tmp_path)
    with pytest.raises(DeliberateError, match="image_shape"):
        Pool.create(tmp_path / "bad", {"image_shape": [0, 28]})
    pool, _ = filled(tmp_path, (2,))
    with pytest.raises(DeliberateError, match="already holds a pool"):
        Pool.create(pool.root, {})
    with pytest.raises(DeliberateError, match="not empty"):
        Pool.create(pool.root / "shards", {})
    with pytest.raises(DeliberateError, match="image_shape"):
        Pool.open_or_create(pool.root, {"image_shape": [32, 32]})
    with pytest.raises(DeliberateError, match="id 2 is out of range"):
        pool.get([0, 2])


def test_export_npz_round_trip(tmp_path):
    pool, images = filled(tmp_path)
    out = export_npz(pool, tmp_path / "out" / "pool.npz")
    with np.load(out, allow_pickle=False) as z:
        assert z["images"].dtype == np.uint8 and z["images"].shape == (20, 28, 28)
        assert z["labels"].dtype == np.int64 and z["ids"].tolist() == list(range(20))
        np.testing.assert_array_equal(z["images"], images)
        np.testing.assert_array_equal(z["labels"], pool.labels())
        records = pool.records()
        assert z["seed"].tolist() == [r["seed"] for r in records]  # the manifest's columns
        assert z["round"].tolist() == [r["round"] for r in records]


@pytest.mark.parametrize("shape", [(28, 28), (12, 10, 3)])
def test_export_imagefolder(tmp_path, shape):
    pool, images = filled(tmp_path, (6, 9), shape=shape)
    out = export_imagefolder(pool, tmp_path / "folder", NAMES)
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == ["0_T-shirt_top", "1_Trouser", "2_Pullover", "3_Dress", "4_Coat"]
    assert (out / "classes.txt").read_text().split("\n")[:2] == ["0_T-shirt_top", "1_Trouser"]
    assert len(list(out.rglob("*.png"))) == 15
    assert len(list((out / "3_Dress").glob("*.png"))) == 3  # ids 3, 8, 13
    np.testing.assert_array_equal(np.asarray(Image.open(out / "4_Coat" / "0000009.png")), images[9])
    with pytest.raises(DeliberateError, match="exists; pass --force"):
        export_imagefolder(pool, out, NAMES)


def test_torchvision_imagefolder_reads_the_export_with_the_pool_labels(tmp_path):
    from torchvision.datasets import ImageFolder

    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
             "Bag", "Ankle boot", "crane", "crane"]  # unsorted, with a repeated name  # fmt: skip
    pool = Pool.create(tmp_path / "pool", {"class_names": names})
    images, records = batch(0, 36)
    pool.append(images, [{**r, "label": i % 12} for i, r in enumerate(records)])
    out = export_imagefolder(pool, tmp_path / "folder")
    assert (out / "10_crane").is_dir() and (out / "11_crane").is_dir()
    data = ImageFolder(str(out))
    by_id = {int(Path(path).stem): label for path, label in data.samples}
    assert [by_id[i] for i in range(len(pool))] == pool.labels().tolist()
    assert data.classes == (out / "classes.txt").read_text().splitlines()


def test_exports_never_destroy(tmp_path):
    pool, _ = filled(tmp_path)
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    with pytest.raises(DeliberateError, match="exists; pass --force"):
        export_npz(pool, keep)
    assert keep.read_text() == "mine"
    for inside in (pool.root / "pool.json", pool.root / "sub" / "x.npz", pool.root):
        with pytest.raises(DeliberateError, match="inside the pool"):
            export_npz(pool, inside, force=True)
    with pytest.raises(DeliberateError, match="is a folder"):
        (tmp_path / "dir").mkdir()
        (tmp_path / "dir" / "f").write_text("x")
        export_npz(pool, tmp_path / "dir", force=True)
    assert Pool(pool.root).verify() == len(pool)  # the pool is untouched
    export_npz(pool, keep, force=True)  # asked for: replaced, atomically
    with np.load(keep) as z:
        assert len(z["images"]) == len(pool)
    tree = export_imagefolder(pool, tmp_path / "tree", NAMES)
    (tree / "extra.txt").write_text("x")
    export_imagefolder(pool, tree, NAMES, force=True)
    assert not (tree / "extra.txt").exists() and len(list(tree.rglob("*.png"))) == len(pool)


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_sample_grid_png(tmp_path):
    images, records = batch(0, 60)
    labels = [r["label"] for r in records]
    path = save_sample_grid(images, labels, NAMES, tmp_path / "g" / "grid.png", title="pool")
    png = read_png(path)
    side = 10 * CELL_PX + 11 * PAD_PX
    assert png.shape[0] == TITLE_PX + 5 * CELL_PX + 6 * PAD_PX and png.shape[1] > side
    assert png.std() > 20  # not blank
    # The first image of class 0 sits, upscaled 3x nearest, in the top-left cell of the mosaic.
    x, y = png.shape[1] - side + PAD_PX, TITLE_PX + PAD_PX
    cell = np.repeat(np.repeat(images[0], 3, axis=0), 3, axis=1)
    np.testing.assert_array_equal(png[y : y + CELL_PX, x : x + CELL_PX, 0], cell)
    rgb = np.repeat(images[:, :16, :16, None], 3, axis=3)
    paired = save_paired_grid(rgb, 255 - rgb, labels, NAMES, tmp_path / "pair.png", per_class=3)
    assert (
        read_png(paired).shape[0] == PANEL_TITLE_PX + 5 * (80 + PAD_PX) + PAD_PX
    )  # 16 px -> 80 px cells
    with pytest.raises(DeliberateError, match="class names"):
        save_sample_grid(images, labels, NAMES[:3], tmp_path / "x.png")
