"""CLI smoke tests: real subcommands on a tiny generator; bad input gives one line and exit 2."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deliberate.cli import main
from deliberate.data.pool import Pool
from tests.helpers import tiny_backend


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "tiny"
    tiny_backend(seed=1).save(path)
    return path


def run(*argv):
    return main([str(a) for a in argv])


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "deliberate.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for name in ("train-generator", "generate", "export", "theory"):
        assert name in out


def test_generate_resume_and_export(tmp_path, tiny_generator, capsys):
    pool_dir = tmp_path / "pool"
    args = ("generate", "--generator", tiny_generator, "--per-class", 2, "--out", pool_dir,
            "--steps", 2, "--batch-size", 7, "--quiet")
    assert run(*args) == 0
    pool = Pool(pool_dir)
    assert len(pool) == 20
    assert np.bincount(pool.labels()).tolist() == [2] * 10
    rec = pool.records()[0]
    assert {"seed", "label", "generator", "steps", "cfg"} <= rec.keys()
    assert (pool_dir / "samples.png").is_file()
    images_before, _ = pool.load_all()
    # Re-running the same request adds nothing; a larger one adds only what is missing.
    assert run(*args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert run(*args[:4], 3, *args[5:]) == 0
    pool = Pool(pool_dir)
    assert len(pool) == 30 and len({r["seed"] for r in pool.records()}) == 30
    images_after, _ = pool.load_all()
    assert np.array_equal(images_after[:20], images_before)

    assert run("export", pool_dir, "--format", "npz", "--out", tmp_path / "pool.npz") == 0
    data = np.load(tmp_path / "pool.npz")
    assert data["images"].shape == (30, 28, 28) and data["images"].dtype == np.uint8
    assert data["labels"].dtype == np.int64
    assert run("export", pool_dir, "--format", "imagefolder", "--out", tmp_path / "folders") == 0
    pngs = sorted((tmp_path / "folders").rglob("*.png"))
    assert len(pngs) == 30
    assert np.asarray(Image.open(pngs[0])).shape == (28, 28)


def test_same_seed_same_pixels_whatever_the_batch(tmp_path, tiny_generator):
    for bs, name in ((3, "a"), (20, "b")):
        assert run("generate", "--generator", tiny_generator, "--per-class", 2, "--out",
                   tmp_path / name, "--steps", 2, "--batch-size", bs, "--quiet") == 0
    a, la = Pool(tmp_path / "a").load_all()
    b, lb = Pool(tmp_path / "b").load_all()
    assert np.array_equal(a, b) and np.array_equal(la, lb)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--per-class", "0", "--out", "{tmp}/p"], "--per-class 0"),
        (["generate", "--per-class", "1", "--out", "{tmp}/p", "--classes", "12"], "class ids [12]"),
        (["generate", "--per-class", "1", "--out", "{tmp}/p", "--cfg", "-1"], "--cfg: -1.0 is out of range"),
        (["generate", "--per-class", "1", "--out", "{tmp}/p", "--cfg", "nan"], "--cfg: nan is out of range"),
        (["generate", "--per-class", "1", "--out", "{tmp}/p", "--threads", "-1"], "--threads -1 must be >= 0"),
        (["generate", "--per-class", "1", "--out", "{tmp}/p", "--omega", "0.1"], "--omega and --criterion need --learner"),
        (["generate", "--per-class", "1", "--out", "{tmp}/p", "--generator", "{tmp}"],
         "not a deliberate generator folder"),
        (["export", "{tmp}/nopool", "--out", "{tmp}/x.npz"], "pool"),
        (["train-generator", "{tmp}/missing.yaml", "--out", "{tmp}/g"], "cannot read config"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_generator, capsys, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    if argv[0] == "generate" and "--generator" not in argv:
        argv += ["--generator", str(tiny_generator), "--steps", "1", "--quiet"]
    assert run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("deliberate: error:")
    assert not (tmp_path / "p").exists()  # refused before the pool is created


def test_several_overrides_after_one_set_say_how_to_give_them(tmp_path, capsys):
    argv = ["run", "configs/fmnist/tiny.yaml", "--out", str(tmp_path / "r"), "--set", "threads=1",
            "seed=2"]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: seed=2" in err
    assert "its own --set" in err and not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):  # other strays keep argparse's plain message
        main(["presets", "--bogus"])
    assert "its own --set" not in capsys.readouterr().err
