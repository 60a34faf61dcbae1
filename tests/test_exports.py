"""Exports read back by their real readers (datasets, webdataset, a torch DataLoader over
PoolDataset) with the pool's pixels, labels and manifest columns; refusals change nothing."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from deliberate.cli import main
from deliberate.data import PoolDataset
from deliberate.data.export import export_hf, export_webdataset
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError

NAMES = ["T-shirt/top", "Trouser", "crane", "Dress", "crane"]  # a repeated name, as in ImageNet
GREY, RGB = (9, 7), (9, 7, 3)
SRC = str(Path(__file__).resolve().parents[1] / "src")


def make_pool(root: Path, shape=GREY, sizes=(5, 8, 3)) -> Pool:
    """A pool with one shard per size; later shards carry columns earlier ones lack."""
    pool = Pool.open_or_create(root, {"class_names": NAMES})
    rng = np.random.default_rng(len(shape))
    for j, n in enumerate(sizes):
        first = len(pool)
        records = [{"label": (first + i) * 3 % 5, "seed": 100 + first + i, "round": j,
                    "omega": 0.5 * j, "entropy": 0.1 * (first + i)} for i in range(n)]  # fmt: skip
        if j == 2:  # a guided round: the learner's fingerprint and guess per image
            records = [{**r, "fingerprint": "ab12", "learner_pred": 4} for r in records]
        pool.append(rng.integers(0, 256, (n, *shape), dtype=np.uint8), records)
    return pool


@pytest.mark.parametrize("shape", [GREY, RGB])
def test_hf_export_loads_with_datasets(tmp_path, shape):
    import datasets

    pool = make_pool(tmp_path / "pool", shape)
    out = export_hf(pool, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    ds = datasets.load_from_disk(str(out))
    assert isinstance(ds.features["image"], datasets.Image)
    label = ds.features["label"]
    assert isinstance(label, datasets.ClassLabel)
    assert label.names == ["T-shirt/top", "Trouser", "crane_2", "Dress", "crane_4"]
    assert ds["label"] == pool.labels().tolist() and ds["id"] == list(range(len(pool)))
    images, _ = pool.get(range(len(pool)))
    for i in range(len(pool)):
        np.testing.assert_array_equal(np.asarray(ds[i]["image"]), images[i])
    records = pool.records()
    assert ds["seed"] == [r["seed"] for r in records] and ds["round"] == [
        r["round"] for r in records
    ]
    assert ds["omega"] == [r["omega"] for r in records]
    np.testing.assert_allclose(ds["entropy"], [r["entropy"] for r in records])
    assert ds["fingerprint"] == [""] * 13 + ["ab12"] * 3  # '' where a row lacks the column
    assert ds["learner_pred"] == [-1] * 13 + [4] * 3
    assert "guidance_skipped" not in ds.column_names  # no row has it: no column


@pytest.mark.parametrize("shape", [GREY, RGB])
def test_webdataset_export_loads_with_webdataset(tmp_path, shape):
    import webdataset as wds

    pool = make_pool(tmp_path / "pool", shape)
    out = export_webdataset(pool, tmp_path / "wds", shard_size=6)
    urls = sorted(str(p) for p in out.glob("*.tar"))
    assert [Path(u).name for u in urls] == ["pool-000000.tar", "pool-000001.tar", "pool-000002.tar"]
    with tarfile.open(urls[0]) as tar:
        assert tar.getnames()[:3] == ["0000000.png", "0000000.cls", "0000000.json"]
        assert len(tar.getnames()) == 6 * 3
        assert tar.extractfile("0000001.cls").read() == b"3"  # the label as ASCII digits
    spec = "pil" if len(shape) == 3 else "pill"  # webdataset's "pil" makes every image RGB
    data = wds.WebDataset(urls, shardshuffle=False).decode(spec)
    samples = list(data.to_tuple("__key__", "png", "cls", "json"))
    assert [key for key, *_ in samples] == [f"{i:07d}" for i in range(len(pool))]
    assert [cls for _, _, cls, _ in samples] == pool.labels().tolist()
    assert [record for *_, record in samples] == pool.records()
    images, _ = pool.get(range(len(pool)))
    for (_, png, _, _), image in zip(samples, images, strict=True):
        np.testing.assert_array_equal(np.asarray(png), image)
    assert (out / "classes.txt").read_text().splitlines() == NAMES


def list_collate(batch):
    """Keep the records as a list of dicts (rows of different rounds have different keys)."""
    images, labels, records = zip(*batch, strict=True)
    return torch.stack(images), torch.tensor(labels), list(records)


@pytest.mark.parametrize("shape", [GREY, RGB])
def test_pool_dataset_in_a_dataloader_with_two_workers(tmp_path, shape):
    pool = make_pool(tmp_path / "pool", shape)
    ds = PoolDataset(pool.root, with_record=True)
    assert len(ds) == len(pool) and ds.targets == pool.labels().tolist() and ds.classes == NAMES
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=list_collate)
    batches = list(loader)
    got = torch.cat([images for images, _, _ in batches])
    images, labels = pool.get(range(len(pool)))
    want = torch.from_numpy(images if len(shape) == 3 else images[..., None]).permute(0, 3, 1, 2)
    assert got.dtype == torch.float32 and got.shape == (len(pool), want.shape[1], 9, 7)
    torch.testing.assert_close(got, want.float() / 255, rtol=0, atol=0)
    assert torch.cat([b for _, b, _ in batches]).tolist() == labels.tolist()
    assert [r for _, _, records in batches for r in records] == pool.records()


def test_pool_dataset_transforms_indexing_and_pickling(tmp_path):
    pool = make_pool(tmp_path / "pool", RGB)
    seen = []

    def transform(image):  # torchvision's convention: a transform gets a PIL image
        seen.append(image.mode)
        return np.asarray(image)

    ds = PoolDataset(pool.root, transform=transform, target_transform=lambda y: NAMES[y])
    image, name = ds[-1]  # negative indices count from the end, as for a list
    np.testing.assert_array_equal(image, pool.get([15])[0][0])
    assert name == NAMES[pool.labels()[15]] and seen == ["RGB"]
    for bad in (16, -17):
        with pytest.raises(IndexError, match="out of range for a pool of 16"):
            ds[bad]
    plain = PoolDataset(pool.root)
    unread = len(pickle.dumps(plain))
    plain[0]  # shard 0 is mapped now; pickling must not copy it nor carry an open map
    assert len(pickle.dumps(plain)) == unread
    again = pickle.loads(pickle.dumps(plain))
    torch.testing.assert_close(again[7][0], plain[7][0])
    # Only the shard an index lives in is read: with shard 1 damaged, shards 0 and 2 still load.
    (pool.root / "shards" / "shard-000001.npz").write_bytes(b"not a zip")
    assert plain[13][1] == pool.labels()[13] and plain[4][1] == pool.labels()[4]
    with pytest.raises(DeliberateError, match="shard-000001.npz is corrupt"):
        plain[5]


def test_data_package_imports_without_torch():
    code = "import sys, deliberate.data, deliberate.data.export; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": SRC, "PATH": ""})  # fmt: skip
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("fmt", ["hf", "webdataset"])
def test_export_refusals_write_nothing_and_force_replaces(tmp_path, capsys, fmt):
    pool = make_pool(tmp_path / "pool", GREY, sizes=(3,))
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export", str(pool.root), "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "exists; pass --force" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "pool"]
    assert (out / "mine.txt").read_text() == "keep"
    for inside in (pool.root, pool.root / "export"):
        assert (
            main(["export", str(pool.root), "--format", fmt, "--out", str(inside), "--force"]) == 2
        )
        assert "inside the pool" in capsys.readouterr().err
    assert Pool(pool.root).verify() == 3 and not (pool.root / "export").exists()
    empty = Pool.create(tmp_path / "empty", {"class_names": NAMES})
    assert main(["export", str(empty.root), "--format", fmt, "--out", str(tmp_path / "e")]) == 2
    assert "is empty" in capsys.readouterr().err and not (tmp_path / "e").exists()
    assert main(["export", str(pool.root), "--format", fmt, "--out", str(out), "--force"]) == 0
    assert not (out / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out", "pool"]  # no temp left
    if fmt == "webdataset":
        assert sorted(p.name for p in out.iterdir()) == ["classes.txt", "pool-000000.tar"]
    else:
        import datasets

        assert datasets.load_from_disk(str(out))["label"] == pool.labels().tolist()


def test_bad_arguments_are_one_line_errors(tmp_path, monkeypatch):
    pool = make_pool(tmp_path / "pool", GREY, sizes=(3,))
    with pytest.raises(DeliberateError, match="shard_size=0 must be a positive"):
        export_webdataset(pool, tmp_path / "w", shard_size=0)
    with pytest.raises(DeliberateError, match="3 class names were given"):
        export_webdataset(pool, tmp_path / "w", class_names=["a", "b", "c"])
    with pytest.raises(DeliberateError, match="is empty"):
        PoolDataset(Pool.create(tmp_path / "empty", {}).root)
    monkeypatch.setitem(sys.modules, "datasets", None)  # what Python does when it is missing
    with pytest.raises(DeliberateError, match=r"pip install 'deliberate\[hf\]'"):
        export_hf(pool, tmp_path / "h")
    assert not (tmp_path / "w").exists() and not (tmp_path / "h").exists()


@pytest.mark.parametrize("fmt", ["imagefolder", "webdataset"])
def test_sigint_during_export_keeps_the_old_output_and_says_export_again(tmp_path, capsys,
                                                                         monkeypatch, fmt):  # fmt: skip
    """A real SIGINT on the 4th image: exit 130, one line that does not promise a resume, the
    replaced --out untouched and no temp folder left beside it."""
    from PIL import Image

    pool = make_pool(tmp_path / "pool", GREY, sizes=(5, 3))
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    save, calls = Image.Image.save, []

    def interrupted_save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGINT)  # Python's own handler: KeyboardInterrupt
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    # As in a fresh `deliberate` process (something earlier in the suite may have replaced it).
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = main(["export", str(pool.root), "--format", fmt, "--out", str(out), "--force"])
    finally:
        signal.signal(signal.SIGINT, old)
    err = capsys.readouterr().err
    assert code == 130 and len(calls) == 4, err
    assert err == (f"deliberate: interrupted; nothing was written to {out} (an export is built "
                   "under a temp name and renamed when whole); re-run the same command to "
                   "export it again\n")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "pool"]
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and Pool(pool.root).verify() == 8
