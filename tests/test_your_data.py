"""Your own images: train the small generator on a labelled folder, run DP on it, report it.

The three commands of docs/your-data.md, end to end on tiny folders (RGB and grey, images of
mixed sizes and formats), and the bad folders each refused in one line with nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deliberate.cli import main
from deliberate.data.pool import Pool

CLASSES = ("cat", "dog", "zebra crossing")  # any folder names: a space sorts and survives
TINY_GEN = ["model.block_out_channels=[16]", "model.norm_num_groups=4",
            "model.layers_per_block=1", "train.steps=4", "train.batch_size=8",
            "train.warmup_steps=1", "train.sample_every=0", "train.checkpoint_every=2"]  # fmt: skip
TINY_DP = ["learner.iterations=40", "learner.batch_size=16", "learner.ema_decay=0.9",
           "practice.eval_every=5", "practice.test_every=0", "practice.max_images=60",
           "generator.sampler.steps=3", "generator.batch_size=15", "guidance.every=1",
           "threads=1"]  # fmt: skip
SIZES = {"imagefolder/dp": ["practice.initial=30", "practice.per_round=15"],
         "imagefolder/static": ["practice.initial=60"]}


def make_folder(root: Path, mode: str = "RGB", counts=(("train", 8), ("val", 3), ("test", 3))):
    """ROOT/{train,val,test}/<class>/ with PNG and JPEG images of mixed sizes, class-coloured."""
    rng = np.random.default_rng(0)
    for split, n in counts:
        for k, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(12, 40, 2)
                pixels = (rng.random((h, w, 3)) * 60 + k * 90).astype(np.uint8)
                Image.fromarray(pixels).convert(mode).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def sets(items: list[str]) -> list[str]:
    return [f"--set={s}" for s in items]


def train_generator(tmp_path: Path, data: Path, extra=("model.image_size=16",)) -> Path:
    args = ["train-generator", "imagefolder/generator", "--out", str(tmp_path / "gen"), "--quiet",
            *sets([f"data.imagefolder.root={data}", *TINY_GEN, *extra])]  # fmt: skip
    assert main(args) == 0
    return tmp_path / "gen" / "generator"


@pytest.mark.parametrize("mode,channels,size", [("RGB", 3, 32), ("L", 1, 16)])
def test_the_three_commands(tmp_path, mode, channels, size):
    data = make_folder(tmp_path / "data", mode)
    gen = train_generator(tmp_path, data, [f"model.image_channels={channels}",
                                           f"model.image_size={size}"])  # fmt: skip
    meta = json.loads((gen / "deliberate.json").read_text())
    assert meta["class_names"] == list(CLASSES) and meta["image_channels"] == channels
    assert meta["unshuffle"] == size // 8  # auto: the UNet sees 8x8 (32 px -> 4, 16 px -> 2)
    # The run never reads train/: it works with the generator's training images gone.
    shutil.rmtree(data / "train")
    for preset in ("imagefolder/dp", "imagefolder/static"):
        out = tmp_path / preset.split("/")[1]
        args = ["run", preset, "--out", str(out), "--quiet",
                *sets([f"data.imagefolder.root={data}", f"generator.path={gen}", *TINY_DP, *SIZES[preset]])]  # fmt: skip
        assert main(args) == 0
        pool = Pool(out / "pool")
        assert len(pool) == 60 and pool.class_names == list(CLASSES)
        assert tuple(pool.image_shape) == ((size, size) if channels == 1 else (size, size, 3))
        summary = json.loads((out / "summary.json").read_text())
        assert 0 <= summary["test_acc"] <= 1 and summary["shifted"] == {}
    rounds = {r["round"] for r in Pool(tmp_path / "dp" / "pool").records()}
    assert rounds == {0, 1, 2}  # DP added guided rounds; static did not
    assert {r["round"] for r in Pool(tmp_path / "static" / "pool").records()} == {0}
    assert main(["report", str(tmp_path / "dp"), str(tmp_path / "static"),
                 "--out", str(tmp_path / "report"), "--no-quality"]) == 0  # fmt: skip
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Shifted test sets" not in text  # the Fashion-MNIST suite is not run on your data


def test_preloaded_images_are_the_files_resized(tmp_path):
    from deliberate.data.imagefolder import decode_images

    f = tmp_path / "a.png"
    Image.fromarray(np.full((30, 20, 3), (10, 200, 30), np.uint8)).save(f)
    rgb, grey = decode_images([str(f)], 16, 3), decode_images([str(f)], 16, 1)
    assert rgb.shape == (1, 16, 16, 3) and grey.shape == (1, 16, 16)
    assert (rgb[0] == (10, 200, 30)).all()  # a flat image stays flat through crop and resize
    assert grey[0, 0, 0] == round(0.299 * 10 + 0.587 * 200 + 0.114 * 30)  # PIL's L conversion


def _refused(tmp_path, capsys, argv, message):
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def _zero_byte(data):
    (data / "train" / "dog" / "0.jpg").write_bytes(b"")


def _garbage(data):
    (data / "val" / "cat" / "1.png").write_bytes(b"\x89PNG not really")


def _no_classes(data):
    for d in (data / "train").iterdir():
        shutil.rmtree(d)


def _val_only_class(data):
    (data / "val" / "emu").mkdir()


def _missing_in_test(data):
    shutil.rmtree(data / "test" / "dog")


BAD_FOLDERS = [  # (damage, command, message)
    (_zero_byte, "gen", "cannot read image"),
    (_garbage, "run", "cannot read image"),
    (_no_classes, "gen", "holds no class folders"),
    (_val_only_class, "run", "emu is not in train/"),
    (_missing_in_test, "run", "have no folder in"),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny generator trained on make_folder's images (three classes, 16 px RGB)."""
    tmp = tmp_path_factory.mktemp("trained")
    return train_generator(tmp, make_folder(tmp / "data"))


@pytest.mark.parametrize("damage,command,message", BAD_FOLDERS, ids=lambda x: getattr(x, "__name__", x))
def test_bad_folders_are_one_line_and_nothing_written(tmp_path, capsys, trained, damage, command,
                                                      message):  # fmt: skip
    data = make_folder(tmp_path / "data")
    damage(data)
    root = f"--set=data.imagefolder.root={data}"
    if command == "gen":
        argv = ["train-generator", "imagefolder/generator", "--out", str(tmp_path / "gen"), root,
                *sets([*TINY_GEN, "model.image_size=16"])]  # fmt: skip
    else:
        argv = ["run", "imagefolder/dp", "--out", str(tmp_path / "dp"), root,
                f"--set=generator.path={trained}", *sets(TINY_DP + SIZES["imagefolder/dp"])]  # fmt: skip
    _refused(tmp_path, capsys, argv, message)


def test_a_generator_of_other_classes_is_refused(tmp_path, capsys, trained):
    data = make_folder(tmp_path / "data")
    (data / "train" / "cat").rename(data / "train" / "ant")  # same count, other names
    for split in ("val", "test"):
        (data / split / "cat").rename(data / split / "ant")
    argv = ["run", "imagefolder/dp", "--out", str(tmp_path / "dp"),
            f"--set=data.imagefolder.root={data}", f"--set=generator.path={trained}"]  # fmt: skip
    _refused(tmp_path, capsys, argv, "class 0 is 'cat' but the data's is 'ant'")
    shutil.rmtree(data / "train" / "dog"), shutil.rmtree(data / "val" / "dog")
    shutil.rmtree(data / "test" / "dog")
    _refused(tmp_path, capsys, argv, "has 3 classes but the data has 2")
    # The shipped Fashion-MNIST generator (generator.path left null) is named too.
    argv = argv[:-1]
    _refused(tmp_path, capsys, argv, "generator.path")
