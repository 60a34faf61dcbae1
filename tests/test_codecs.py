"""Pool codecs (deliberate.data.codecs): png exact, jpeg/webp close and deterministic, every reader
decodes, damage and hostile offsets are one line, the entropy is scored on decoded pixels, and
a run with a codec resumes and repeats to identical bytes."""

from __future__ import annotations

import io
import json
import signal
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from deliberate.cli import main
from deliberate.data.codecs import PoolSettings
from deliberate.data.dataset import PoolDataset
from deliberate.data.export import export_hf, export_imagefolder, export_npz, export_webdataset
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError
from deliberate.loader import LoaderSampler
from tests.helpers import cli_args, fork_run, make_generator, needs_data

NAMES = ["a", "b", "c", "d"]
GREY, RGB, RGBA = (12, 10), (16, 12, 3), (8, 8, 4)


def smooth(n: int, shape, seed: int = 0) -> np.ndarray:
    """Smooth uint8 images (3x3 random colours, bilinearly upsampled): what lossy codecs suit."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    c = 1 if len(shape) == 2 else shape[2]
    out = []
    for _ in range(n):
        coarse = rng.integers(30, 226, (3, 3, c), dtype=np.uint8)
        small = Image.fromarray(coarse[..., 0] if c == 1 else coarse)
        out.append(np.asarray(small.resize((w, h), Image.Resampling.BILINEAR)).reshape(shape))
    return np.stack(out)


def records(first: int, n: int) -> list[dict]:
    return [{"label": (first + i) % 4, "seed": first + i, "round": 0, "entropy": 0.5}
            for i in range(n)]  # fmt: skip


def make_pool(root: Path, codec: str, shape=RGB, quality: int = 90, sizes=(5, 3)):
    """A pool of `codec` with a shard per size (the last one staged and committed) and the
    images as given to it."""
    meta = {"class_names": NAMES, "image_shape": list(shape), **PoolSettings(codec, quality).meta()}
    pool = Pool.create(root, meta)
    images = smooth(sum(sizes), shape)
    first = 0
    for j, n in enumerate(sizes):
        if j < len(sizes) - 1:
            pool.append(images[first : first + n], records(first, n))
        else:  # the torchrun path: staged by a rank, committed by rank 0
            pool.stage(images[first : first + n], records(first, n), shard=j, first=first)
            assert pool.commit() == n
        first += n
    return pool, images


def shard_members(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def rewrite(path: Path, **changes) -> None:
    """Rewrite shard `path` (a valid zip) with some members replaced."""
    members = {**shard_members(path), **changes}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, value in members.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, value, allow_pickle=False)
            z.writestr(f"{name}.npy", buf.getvalue())


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# -- the codecs themselves ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [GREY, RGB, RGBA, (6, 5, 1)])
def test_png_round_trip_is_exact(shape):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, *shape), dtype=np.uint8)  # noise: nothing to hide behind
    png = PoolSettings("png")
    members = png.members(images)
    assert sorted(members) == ["crc32", "encoded", "offsets"]
    assert members["encoded"].dtype == np.uint8 and members["offsets"].dtype == np.int64
    assert members["offsets"][0] == 0 and members["offsets"][-1] == len(members["encoded"])
    start, stop = members["offsets"][1], members["offsets"][2]
    one = bytes(members["encoded"][start:stop])
    assert one.startswith(b"\x89PNG") and members["crc32"][1] == zlib.crc32(one)
    np.testing.assert_array_equal(png.decode(one, shape), images[1])
    assert png.roundtrip(images) is images  # lossless: nothing to score differently


@pytest.mark.parametrize("codec", ["jpeg", "webp"])
@pytest.mark.parametrize("shape", [GREY, RGB])
def test_lossy_codecs_are_close_and_deterministic(codec, shape):
    images = smooth(6, shape)
    hi, lo = PoolSettings(codec, 95), PoolSettings(codec, 30)
    a, b = hi.members(images), hi.members(images.copy())
    assert all(np.array_equal(a[k], b[k]) for k in a)  # same pixels, same bytes
    back = hi.roundtrip(images)
    assert back.shape == images.shape and back.dtype == np.uint8
    err = np.abs(back.astype(int) - images.astype(int))
    mse = np.mean(err.astype(float) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30 and mse > 0  # close, yet not the same pixels
    assert np.array_equal(hi.roundtrip(images), back)  # decoding is deterministic too
    assert len(lo.members(images)["encoded"]) < len(a["encoded"])  # lower quality, fewer bytes
    assert np.abs(lo.roundtrip(images).astype(int) - images.astype(int)).mean() > err.mean()


def test_jpeg_refuses_alpha_and_bad_meta_is_one_line(tmp_path):
    with pytest.raises(DeliberateError) as e:
        PoolSettings("jpeg").check_shape(RGBA)
    assert "cannot store 4-channel images; use raw or png or webp" in one_line(e)
    meta = {"class_names": NAMES}
    bad = [({"codec": "gif"}, "codec 'gif' is not one of"),
           ({"codec": "jpeg", "quality": 0}, "quality 0 must be an int in 1..100"),
           ({"codec": "webp", "quality": True}, "quality True must be an int"),
           ({"codec": "jpeg", "image_shape": [8, 8, 4]}, "cannot store 4-channel")]  # fmt: skip
    for extra, message in bad:
        with pytest.raises(DeliberateError) as e:
            Pool.create(tmp_path / "p", {**meta, **extra})
        assert message in one_line(e)
        assert not (tmp_path / "p").exists()  # refused before anything is written
    pool = Pool.create(tmp_path / "rgba", {**meta, "codec": "jpeg"})  # shape fixed at append
    with pytest.raises(DeliberateError, match="cannot store 4-channel"):
        pool.append(smooth(2, RGBA), records(0, 2))
    assert len(Pool(pool.root)) == 0 and not list(pool.root.glob("shards/*"))


def test_raw_pools_are_written_as_before(tmp_path):
    """No codec key, format version 1, and shards of images, ids, labels, rows, in that order."""
    pool, images = make_pool(tmp_path / "raw", "raw", sizes=(4,))
    header = json.loads((pool.root / "pool.json").read_text())
    assert header["version"] == 1 and "codec" not in header["meta"]
    assert pool.codec == PoolSettings() and not pool.codec.lossy
    with zipfile.ZipFile(pool.root / "shards" / "shard-000000.npz") as z:
        assert z.namelist() == ["images.npy", "ids.npy", "labels.npy", "rows.npy"]
    explicit = Pool.create(tmp_path / "explicit", {"class_names": NAMES, "codec": "raw"})
    assert json.loads((explicit.root / "pool.json").read_text())["version"] == 1


def test_pool_json_version_and_codec_must_agree(tmp_path):
    pool, _ = make_pool(tmp_path / "png", "png", sizes=(2,))
    header = json.loads((pool.root / "pool.json").read_text())
    assert header["version"] == 2 and header["meta"]["codec"] == "png"
    assert "quality" not in header["meta"]  # png has no quality to record
    (pool.root / "pool.json").write_text(json.dumps({**header, "version": 1}))
    with pytest.raises(DeliberateError) as e:
        Pool(pool.root)
    assert "version and codec disagree" in one_line(e)


# -- a compressed pool through every reader ---------------------------------------------------


@pytest.mark.parametrize("codec,shape", [("png", GREY), ("png", RGBA), ("jpeg", RGB),
                                         ("jpeg", GREY), ("webp", RGB), ("webp", GREY)])  # fmt: skip
def test_every_reader_gets_the_decoded_pixels(tmp_path, codec, shape):
    pool, images = make_pool(tmp_path / "pool", codec, shape)
    want = PoolSettings(codec, 90).roundtrip(images)  # png: the images themselves
    if codec == "png":
        assert want is images
    pool = Pool(pool.root)
    assert pool.codec.codec == codec and pool.verify() == len(images)
    with zipfile.ZipFile(pool.root / "shards" / "shard-000001.npz") as z:
        assert z.namelist() == ["encoded.npy", "offsets.npy", "crc32.npy", "ids.npy",
                                "labels.npy", "rows.npy"]  # fmt: skip
    np.testing.assert_array_equal(pool.load_all()[0], want)
    np.testing.assert_array_equal(pool.get([7, 0, 3])[0], want[[7, 0, 3]])
    np.testing.assert_array_equal(np.concatenate([i for i, _, _ in pool.iter_shards()]), want)
    view = pool.images_view()
    np.testing.assert_array_equal(view[np.array([6, 1, 6])], want[[6, 1, 6]])
    np.testing.assert_array_equal(view[2:5], want[2:5])
    assert [r["seed"] for r in pool.records([4, 2])] == [4, 2]
    # PoolDataset: ToTensor-like tensors, and PIL images of the pool's mode for a transform
    ds = PoolDataset(pool.root)
    image, label = ds[5]
    pixels = want[5] if want.ndim == 4 else want[5][..., None]
    torch.testing.assert_close(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    assert label == 5 % 4
    pil, _ = PoolDataset(pool.root, transform=lambda im: im)[-1]
    np.testing.assert_array_equal(np.asarray(pil), want[-1])
    # exports: npz, class folders of PNGs, WebDataset tars, a datasets folder
    with np.load(export_npz(pool, tmp_path / "out.npz"), allow_pickle=False) as z:
        np.testing.assert_array_equal(z["images"], want)
    folder = export_imagefolder(pool, tmp_path / "folders")
    for i in (0, 7):
        png = folder / f"{i % 4:d}_{NAMES[i % 4]}" / f"{i:07d}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(png)), want[i])
    tars = export_webdataset(pool, tmp_path / "wds", shard_size=4)
    with tarfile.open(tars / "pool-000001.tar") as tar:
        png = Image.open(io.BytesIO(tar.extractfile("0000005.png").read()))
        np.testing.assert_array_equal(np.asarray(png), want[5])
    pytest.importorskip("datasets")
    import datasets

    hf = datasets.load_from_disk(str(export_hf(pool, tmp_path / "hf")))
    np.testing.assert_array_equal(np.asarray(hf[3]["image"]), want[3])


def test_decoding_happens_in_the_dataloader_workers(tmp_path):
    """With workers, the main process never opens (let alone decodes) a shard."""
    pool, images = make_pool(tmp_path / "pool", "png", GREY)
    rounds = pool.column("round")

    def sampler(workers):
        return LoaderSampler(pool.images_view(), pool.labels(), rounds, 1.0, seed=3,
                             batch_size=6, part=slice(None), start=0, stop=4,
                             workers=workers)  # fmt: skip

    inline, ahead = sampler(0), sampler(2)
    got = [(inline(None, 6, slice(None)), ahead(None, 6, slice(None))) for _ in range(4)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in got)
    assert inline.loader.dataset.images._maps  # in-process: this process decoded
    assert ahead.loader.dataset.images._maps == {}  # the workers did
    ds = PoolDataset(pool.root)
    batches = list(DataLoader(ds, batch_size=4, num_workers=2))
    torch.testing.assert_close(torch.cat([b for b, _ in batches])[:, 0], torch.from_numpy(images) / 255)
    assert ds._last is None  # no shard was read in this process


def test_open_or_create_refuses_another_codec(tmp_path):
    pool, _ = make_pool(tmp_path / "pool", "jpeg", sizes=(2,))
    meta = {"class_names": NAMES, "image_shape": list(RGB)}
    assert len(Pool.open_or_create(pool.root, {**meta, "codec": "jpeg", "quality": 90})) == 2
    for other, message in [({}, "has codec='jpeg' not 'raw'"),
                           ({"codec": "png"}, "has codec='jpeg' not 'png'"),
                           ({"codec": "jpeg", "quality": 75}, "has quality=90 not 75")]:  # fmt: skip
        with pytest.raises(DeliberateError) as e:
            Pool.open_or_create(pool.root, {**meta, **other})
        assert message in one_line(e)
    raw, _ = make_pool(tmp_path / "raw", "raw", sizes=(2,))
    with pytest.raises(DeliberateError, match="has codec='raw' not 'png'"):
        Pool.open_or_create(raw.root, {"class_names": NAMES, "codec": "png"})


# -- damage: one line, no traceback, no large allocation ---------------------------------------


def readers(root: Path):
    """Every way into a pool's pixels, each a thunk."""
    return {
        "load_all": lambda: Pool(root).load_all(),
        "verify": lambda: Pool(root).verify(),
        "view": lambda: Pool(root).images_view()[np.arange(len(Pool(root)))],
        "dataset": lambda: [PoolDataset(root)[i] for i in range(len(Pool(root)))],
        "export": lambda: export_npz(Pool(root), root.parent / "x.npz", force=True),
    }


def test_corrupt_encoded_bytes_are_one_line(tmp_path):
    # Bytes flipped in the file: the zip CRC (whole-shard reads) or the image's crc32 (views).
    pool, _ = make_pool(tmp_path / "flipped", "jpeg", sizes=(4, 4))
    path = pool.root / "shards" / "shard-000001.npz"
    data = bytearray(path.read_bytes())
    at = data.index(b"\xff\xd8\xff", data.index(b"encoded.npy")) + 200  # inside image 0
    data[at : at + 8] = bytes(8)
    path.write_bytes(bytes(data))
    for name, read in readers(pool.root).items():
        with pytest.raises(DeliberateError) as e:
            read()
        msg = one_line(e)
        assert "shard-000001.npz is corrupt" in msg, name
        assert "crc32" in msg.lower() or "CRC" in msg, (name, msg)
    # A well-formed shard whose bytes (with matching CRCs) are not a decodable image.
    pool, _ = make_pool(tmp_path / "garbage", "png", sizes=(4, 4))
    path = pool.root / "shards" / "shard-000000.npz"
    m = shard_members(path)
    junk = np.frombuffer(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2, np.uint8)
    parts = [junk, *(m["encoded"][a:b] for a, b in zip(m["offsets"][1:-1], m["offsets"][2:],
                                                         strict=True))]  # fmt: skip
    offsets = np.cumsum([0, *map(len, parts)]).astype(np.int64)
    crc = np.array([zlib.crc32(p.tobytes()) for p in parts], np.int64)
    rewrite(path, encoded=np.concatenate(parts), offsets=offsets, crc32=crc)
    for name, read in readers(pool.root).items():
        with pytest.raises(DeliberateError) as e:
            read()
        assert "shard-000000.npz is corrupt (image 0" in one_line(e), name
        assert "not a 10x12 png image" in str(e.value) or "not a 12x16" in str(e.value)


def png_claiming(width: int, height: int) -> bytes:
    """An 8x8 grey PNG whose IHDR (its CRC fixed up) claims width x height."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("claim", [(60_000, 60_000), (30_000, 1), (10, 12)])
def test_an_image_header_claiming_another_size_is_refused_before_decoding(tmp_path, claim):
    pool, _ = make_pool(tmp_path / "pool", "png", GREY, sizes=(2,))
    path = pool.root / "shards" / "shard-000000.npz"
    m = shard_members(path)
    first = np.frombuffer(png_claiming(*claim), np.uint8)
    rest = m["encoded"][m["offsets"][1] :]
    offsets = np.array([0, len(first), len(first) + len(rest)], np.int64)
    crc = np.array([zlib.crc32(first.tobytes()), m["crc32"][1]], np.int64)
    rewrite(path, encoded=np.concatenate([first, rest]), offsets=offsets, crc32=crc)
    for name, read in readers(pool.root).items():
        with pytest.raises(DeliberateError) as e:
            read()
        msg = one_line(e)
        assert "image 0 is not a 10x12 png image" in msg, (name, msg)


HOSTILE = {
    "huge end": lambda o, c: (np.array([0, 2**62, 2**62 + 1], np.int64), c),
    "negative": lambda o, c: (np.array([0, -5, o[-1]], np.int64), c),
    "backwards": lambda o, c: (np.array([0, o[2], o[1], o[-1]][:3], np.int64), c),
    "not from 0": lambda o, c: (o + 1, c),
    "short": lambda o, c: (o[:-1], c),
    "floats": lambda o, c: (o.astype(np.float64), c),
    "uint64 wrapping": lambda o, c: (np.array([0, 2**63, o[-1]], np.uint64), c),
    "2-d": lambda o, c: (o.reshape(1, -1), c),
    "crc too big": lambda o, c: (o, c + 2**40),
}


@pytest.mark.parametrize("how", list(HOSTILE))
def test_hostile_offsets_are_one_line(tmp_path, how):
    pool, _ = make_pool(tmp_path / "pool", "webp", sizes=(2,))
    path = pool.root / "shards" / "shard-000000.npz"
    m = shard_members(path)
    offsets, crc = HOSTILE[how](m["offsets"], m["crc32"])
    rewrite(path, offsets=offsets, crc32=crc)
    for name, read in readers(pool.root).items():
        with pytest.raises(DeliberateError) as e:
            read()
        msg = one_line(e)
        assert "shard-000000.npz is corrupt (its offsets" in msg or "crc32" in msg, (name, msg)


# -- the entropy a round records is the learner's on the decoded pixels ------------------------


@pytest.mark.parametrize("codec", ["jpeg", "webp", "png"])
def test_recorded_entropy_is_scored_on_the_decoded_pixels(tmp_path, codec):
    from deliberate.generate import generate_into_pool
    from deliberate.learner import predictive_entropy, to_float01
    from deliberate.rounds import guided_batch, plan
    from deliberate.sampling import SamplerSettings
    from deliberate.selection import score_stored
    from tests.helpers import tiny_backend

    backend = tiny_backend()
    torch.manual_seed(0)  # a random linear classifier of the pixels: sensitive to every one
    learner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()
    torch.nn.init.normal_(learner[1].weight, std=0.5)
    settings = SamplerSettings(steps=2, cfg=0.0)
    store = PoolSettings(codec, 20)  # low quality: the decoded pixels differ visibly
    pool = Pool.create(tmp_path / "pool", {"class_names": list(backend.class_names),
                                           "image_shape": [28, 28], **store.meta()})  # fmt: skip
    sample_fn = guided_batch(backend, settings, learner, device="cpu", codec=pool.codec)
    pairs = plan(range(10), 2, seed=5)
    generate_into_pool(backend, pool, pairs, settings, batch_size=8, sample_fn=sample_fn,
                       progress=False)  # fmt: skip
    images, _ = Pool(pool.root).load_all()
    with torch.no_grad():
        logits = learner(to_float01(images))
    h = predictive_entropy(logits).numpy()
    assert h.std() > 0.05  # the entropies differ from image to image
    np.testing.assert_allclose(pool.column("entropy"), h, rtol=0, atol=1e-6)
    assert pool.column("learner_pred").tolist() == logits.argmax(-1).tolist()
    # The same batch scored on the pixels before encoding gives other numbers (lossy codecs).
    out = sample_fn(torch.tensor([y for y, _ in pairs[:8]]), [s for _, s in pairs[:8]])
    before = score_stored(learner, out.images, "cpu")["entropy"].numpy()
    differs = np.abs(before - pool.column("entropy")[:8]).max() > 1e-3  # well above 1e-6
    assert differs == store.lossy


# -- config surface ----------------------------------------------------------------------------


def test_bad_pool_settings_are_one_line_and_write_nothing(tmp_path, capsys):
    cfg = Path(__file__).resolve().parent.parent / "configs" / "fmnist" / "tiny.yaml"
    for setting, message in [("pool.codec=gif", "pool.codec: 'gif' is not one of"),
                             ("pool.quality=0", "pool.quality: 0 is out of range"),
                             ("pool.quality=101", "pool.quality: 101 is out of range"),
                             ("pool.qualty=9", "did you mean 'quality'")]:  # fmt: skip
        out = tmp_path / "run"
        assert main(["run", str(cfg), "--out", str(out), "--set", setting, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and not out.exists()
    for flags, message in [(["--codec", "gif"], "--codec: 'gif' is not one of"),
                           (["--codec", "jpeg", "--quality", "0"], "--quality: 0 is out of")]:  # fmt: skip
        out = tmp_path / "gen"
        assert main(["generate", "--per-class", "1", "--out", str(out), "--quiet", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_generate_writes_a_compressed_pool(tmp_path):
    out = tmp_path / "gen"
    args = ["generate", "--per-class", "2", "--out", str(out), "--quiet", "--steps", "2"]
    assert main([*args, "--codec", "webp", "--quality", "80"]) == 0
    pool = Pool(out)
    assert pool.meta["codec"] == "webp" and pool.meta["quality"] == 80 and len(pool) == 20
    assert (out / "samples.png").stat().st_size > 0
    assert main([*args, "--codec", "webp", "--quality", "80"]) == 0  # resumed: nothing to do
    assert main(args) == 2  # the default codec (raw) is not this pool's


# -- kill, resume and repeat a run with a codec ------------------------------------------------


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """Overrides conftest's: a "generator.path=..,data_dir=.." pair for `cli_args`."""
    return make_generator(tmp_path_factory)


def pool_bytes(run: Path) -> dict[str, bytes]:
    files = sorted(p for p in (run / "pool").rglob("*") if p.is_file() and p.name != ".lock")
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in files}


@needs_data
def test_a_png_run_killed_at_pool_points_resumes_to_identical_bytes(generator, tmp_path):
    ref = tmp_path / "ref"
    args = lambda out: [*cli_args(out, generator), "--set=pool.codec=png"]  # noqa: E731
    assert fork_run(args(ref)) == 0, ref.with_suffix(".err").read_text()
    want = pool_bytes(ref)
    assert json.loads(want["pool/pool.json"])["meta"]["codec"] == "png"
    assert "encoded" in shard_members(ref / "pool" / "shards" / "shard-000002.npz")
    for fault in ("pool.shard_tmp_written:3", "pool.manifest_torn:2"):
        out = tmp_path / fault.split(":")[0]
        assert fork_run(args(out), fault) == -signal.SIGKILL, f"{fault} was never reached"
        assert fork_run(args(out)) == 0, out.with_suffix(".err").read_text()
        assert pool_bytes(out) == want, fault
        assert Pool(out / "pool").verify() == 30


@needs_data
def test_jpeg_runs_repeat_and_record_the_entropy_of_the_decoded_images(generator, tmp_path):
    from deliberate.generators.pixel import load_pixel_backend
    from deliberate.learner import to_float01
    from deliberate.rundir import load_learner

    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        args = [*cli_args(out, generator), "--set=pool.codec=jpeg", "--set=pool.quality=60"]
        assert fork_run(args) == 0, out.with_suffix(".err").read_text()
    assert pool_bytes(runs[0]) == pool_bytes(runs[1])
    # Round 1 was guided and scored by the EMA learner of the branch-out fork made just before it.
    backend = load_pixel_backend(generator.split(",")[0].split("=", 1)[1])
    learner = load_learner(runs[0] / "branches" / "round-0" / "fork.pt", backend).eval()
    pool = Pool(runs[0] / "pool")
    ids = np.flatnonzero(pool.column("round") == 1)
    assert len(ids) == 10
    with torch.no_grad():
        h = learner.entropy(to_float01(pool.get(ids)[0])).numpy()
    np.testing.assert_allclose(pool.column("entropy")[ids], h, rtol=0, atol=1e-6)
