"""Bad input to `deliberate run`: one line on stderr naming culprit and fix, exit 2, nothing touched.

Table-driven. FRESH cases aim at a new --out and must leave nothing behind; EXISTING cases damage
one file of an interrupted run and must leave every byte of that run as it was.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from deliberate.cli import main
from deliberate.config import from_dict
from deliberate.data.fashion_mnist import CLASS_NAMES, DEFAULT_DIR, FILES
from deliberate.data.pool import Pool
from deliberate.generators.base import to_uint8
from deliberate.generators.pixel import PixelBackend, PixelModelConfig, load_pixel_backend
from deliberate.sampling import SamplerSettings, sample
from tests.helpers import CONFIGS, SMALL, TINY_UNET, cli_args, fork_run, make_generator, needs_data

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and POSIX signals")


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def generator_like(tmp: Path, name: str, **model) -> str:
    """A tiny random generator folder with other classes or image size than Fashion-MNIST."""
    classes = model.pop("classes", CLASS_NAMES)
    cfg = from_dict(PixelModelConfig, {**TINY_UNET, **model})
    PixelBackend.from_config(cfg, tuple(classes)).save(tmp / name)
    return str(tmp / name)


def gen_path(generator: str) -> str:
    return generator.split(",")[0].removeprefix("generator.path=")


def broken_generator(tmp: Path, generator: str, file: str, data: bytes) -> str:
    shutil.copytree(gen_path(generator), tmp / "broken")
    write(tmp / "broken" / file, data)
    return str(tmp / "broken")


def broken_data(tmp: Path, stem: str, keep: int) -> str:
    """A copy of the Fashion-MNIST folder whose `stem` file is cut to its first `keep` bytes."""
    folder = tmp / "fmnist"
    folder.mkdir()
    for name in FILES.values():
        src = DEFAULT_DIR / f"{name}.gz"
        if name == stem:
            write(folder / name, gzip.decompress(src.read_bytes())[:keep])
        else:
            (folder / f"{name}.gz").symlink_to(src)
    return str(folder)


# (id, setup(tmp, generator) -> extra --set values or a full argv, expected part of the message)
S = lambda *sets: lambda tmp, gen: list(sets)  # noqa: E731
FRESH = [
    ("misspelled-key", S("sede=1"), "unknown config key 'sede'; did you mean 'seed'?"),
    ("misspelled-nested", S("practice.patiense=2"), "'practice.patiense'; did you mean 'patience'"),
    ("misspelled-section", S("practise.patience=2"), "'practise'; did you mean 'practice'"),
    ("int-as-text", S("practice.initial=many"), "practice.initial: expected int, got 'many'"),
    ("bool-as-int", S("learner.iterations=true"), "learner.iterations: expected int, got True"),
    ("list-as-float", S("learner.lr=[1]"), "learner.lr: expected float, got [1]"),
    ("mapping-as-section", S("learner=3"), "learner.: expected a mapping of LearnerSettings"),
    ("omega-negative", S("guidance.omega=-0.1"), "guidance.omega: -0.1 is out of range (must be >= 0)"),
    ("omega-nan", S("guidance.omega=.nan"), "guidance.omega: nan is out of range (must be >= 0)"),
    ("P-negative", S("practice.per_round=-5"), "practice.per_round: -5 is out of range (must be >= 0)"),
    ("patience-zero", S("practice.patience=0"), "practice.patience: 0 is out of range (must be >= 1)"),
    ("budget-below-initial", S("practice.max_images=10"), "practice.max_images=10 is below initial=20"),
    ("too-many-rounds", S("practice.per_round=1", "practice.max_images=200"), "at most 99 rounds"),
    ("eval-every-zero", S("practice.eval_every=0"), "practice.eval_every: 0 is out of range"),
    ("lr-zero", S("learner.lr=0"), "learner.lr: 0.0 is out of range (must be > 0)"),
    ("ema-decay-one", S("learner.ema_decay=1"), "learner.ema_decay: 1.0 is out of range (must be < 1)"),
    ("beta-one", S("learner.betas=[0.9,1.0]"), "learner.betas = [0.9, 1.0] must be two values in [0, 1)"),
    ("oversample-below-one", S("practice.oversample=0.5"), "practice.oversample: 0.5 is out of range (must be >= 1)"),
    ("warmup-plus-cooldown", S("learner.warmup_frac=0.9", "learner.cooldown_frac=0.5"),
     "learner.warmup_frac + learner.cooldown_frac = 1.4 exceeds 1; lower one"),
    ("unknown-arch", S("learner.arch=resnet9"), "learner.arch: 'resnet9' is not one of"),
    ("vit-odd-input", S("learner.arch=vit_b_16"), "learner.input_size=7 must be a multiple of vit_b_16's"),
    ("input-size-huge", S("learner.input_size=5000"), "learner.input_size: 5000 is out of range (must be <= 1024)"),
    ("unknown-scheduler", S("generator.sampler.scheduler=plms"), "scheduler"),
    ("steps-zero", S("generator.sampler.steps=0"), "generator.sampler.steps: 0 is out of range (must be >= 1)"),
    ("seed-negative", S("seed=-1"), "seed: -1 is out of range (must be >= 0)"),
    ("unknown-device", S("device=tpu"), "device: 'tpu' is not one of 'cpu', 'cuda'"),
    *([] if torch.cuda.is_available() else  # only where there is no GPU to find
      [("cuda-without-gpu", S("device=cuda"), "device: cuda, but torch sees no CUDA GPU")]),
    ("override-without-equals", S("seed"), "override 'seed' must look like key.sub=value"),
    ("override-into-scalar", S("seed.x=1"), "'seed' is not a section"),
    ("generator-missing", lambda tmp, gen: [f"generator.path={tmp}/nope"],
     "is not a deliberate generator folder"),
    ("generator-5-classes", lambda tmp, gen: [f"generator.path={generator_like(tmp, 'g5', classes=CLASS_NAMES[:5])}"],
     "the pixel generator has 5 classes but the data has 10; use a generator trained on these"),
    ("generator-16px", lambda tmp, gen: [f"generator.path={generator_like(tmp, 'g16', image_size=16)}"],
     "the generator makes (1, 16, 16) images but the dataset has (1, 28, 28)"),
    ("generator-weights-corrupt",
     lambda tmp, gen: [f"generator.path={broken_generator(tmp, gen, 'unet/diffusion_pytorch_model.safetensors', b'garbage' * 9)}"],
     "is corrupt"),
    ("generator-meta-corrupt", lambda tmp, gen: [f"generator.path={broken_generator(tmp, gen, 'deliberate.json', '{oops')}"],
     "is corrupt"),
    ("data-missing", lambda tmp, gen: [f"data_dir={tmp}/none"], "Fashion-MNIST not found in"),
    ("data-truncated", lambda tmp, gen: [f"data_dir={broken_data(tmp, 't10k-images-idx3-ubyte', 5000)}"],
     "is 5000 bytes, expected 7840016 (truncated?)"),
    ("data-not-idx", lambda tmp, gen: [f"data_dir={broken_data(tmp, 't10k-labels-idx1-ubyte', 3)}"],
     "is truncated (3 bytes, no idx header)"),
]  # fmt: skip
# (id, setup(tmp, generator) -> (argv, env), expected): whole command lines, not --set values.
ARGV = [
    ("yaml-malformed", lambda tmp, gen: [write(tmp / "bad.yaml", "practice: {initial: [1, 2\n")],
     "is not valid YAML at line"),
    ("yaml-top-level-list", lambda tmp, gen: [write(tmp / "list.yaml", "- seed: 1\n")],
     "must hold a mapping of config keys, not list"),
    ("yaml-python-tag", lambda tmp, gen: [write(tmp / "tag.yaml", "seed: !!python/object/apply:os.getpid []\n")],
     "is not valid YAML"),
    ("config-missing", lambda tmp, gen: [tmp / "nope.yaml"], "cannot read config"),
    ("resume-nothing", lambda tmp, gen: [None], "holds no run to resume; give a CONFIG file"),
    ("out-is-a-file", lambda tmp, gen: [CONFIGS / "tiny.yaml", "--out", write(tmp / "f", "x")],
     "is a file; choose a folder"),
    ("out-under-a-file", lambda tmp, gen: [CONFIGS / "tiny.yaml", "--out", write(tmp / "f", "x") / "run"],
     "cannot write the run folder"),
    ("out-not-a-run", lambda tmp, gen: [CONFIGS / "tiny.yaml", "--out", write(tmp / "d" / "x", "x").parent],
     "is not empty and holds no run; choose another --out"),
    ("disk-full", lambda tmp, gen: [CONFIGS / "tiny.yaml", {"DELIBERATE_RESERVE_BYTES": str(10**15)}],
     "free on the disk of"),
]  # fmt: skip


def snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def run_refused(capsys, monkeypatch, argv: list, expect: str) -> None:
    code = main(["run", *map(str, argv), "--quiet"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), err
    assert err.startswith("deliberate: error: ") and err.count("\n") == 1, err
    assert expect in err, err


@needs_data
@pytest.mark.parametrize("setup,expect", [c[1:] for c in FRESH], ids=[c[0] for c in FRESH])
def test_bad_config_is_refused_before_writing(
    setup, expect, generator, tmp_path, capsys, monkeypatch
):
    sets = [*generator.split(","), *SMALL, *setup(tmp_path, generator)]
    out = tmp_path / "run"
    before = snapshot(tmp_path)
    run_refused(capsys, monkeypatch, [CONFIGS / "tiny.yaml", "--out", out,
                                      *[f"--set={s}" for s in sets]], expect)  # fmt: skip
    assert not out.exists() and snapshot(tmp_path) == before


@needs_data
@pytest.mark.parametrize("setup,expect", [c[1:] for c in ARGV], ids=[c[0] for c in ARGV])
def test_bad_command_line_is_refused_before_writing(
    setup, expect, generator, tmp_path, capsys, monkeypatch
):
    argv = setup(tmp_path, generator)
    if argv and isinstance(argv[-1], dict):
        for key, value in argv.pop().items():
            monkeypatch.setenv(key, value)
    if "--out" not in argv:
        argv = [*argv, "--out", tmp_path / "run"]
    argv = [a for a in argv if a is not None] + [f"--set={s}" for s in generator.split(",")]
    if argv[0] == "--out":  # resume without CONFIG takes no --set
        argv = argv[:2]
    before = snapshot(tmp_path)
    run_refused(capsys, monkeypatch, argv, expect)
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """Overrides conftest's: a "generator.path=..,data_dir=.." pair for `cli_args`."""
    return make_generator(tmp_path_factory)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, generator):
    """A run killed mid-training (pool of 2 shards, checkpoint at step 20): the thing to protect."""
    out = tmp_path_factory.mktemp("partial") / "run"
    assert fork_run(cli_args(out, generator), "train.step:25") == -9
    return out


class Evil:
    """Unpickling this runs a shell command: what `weights_only=True` exists to refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def pickled_checkpoint(run: Path) -> None:
    torch.save({"trainer": Evil(run.parent / "pwned"), "loop": {}}, run / "checkpoint.pt")


# (id, damage(run dir) or an environment variable, extra --set values, expected)
EXISTING = [
    ("different-config", lambda run: None, ["practice.patience=3"],
     "different config (practice.patience: 1 there, 3 here); re-run with the same config"),
    ("checkpoint-garbage", lambda run: write(run / "checkpoint.pt", b"\x00garbage"), [],
     "checkpoint.pt is unreadable"),
    ("checkpoint-truncated", lambda run: write(run / "checkpoint.pt", (run / "checkpoint.pt").read_bytes()[:999]), [],
     "checkpoint.pt is unreadable"),
    ("checkpoint-pickled-object", pickled_checkpoint, [],
     "holds pickled Python objects (posix.system), which are never loaded"),
    ("shard-garbage", lambda run: write(run / "pool" / "shards" / "shard-000001.npz", b"garbage"), [],
     "shard shard-000001.npz is corrupt"),
    ("first-shard-garbage", lambda run: write(run / "pool" / "shards" / "shard-000000.npz", b"garbage"), [],
     "shard shard-000000.npz is corrupt"),
    ("shard-missing", lambda run: (run / "pool" / "shards" / "shard-000001.npz").unlink(), [],
     "holds 10 images but this run had 20: a shard file was deleted; restore it"),
    ("shard-gap", lambda run: os.rename(*(run / "pool" / "shards" / f"shard-00000{j}.npz" for j in (1, 2))),
     [], "shard-000001.npz is missing but shard-000002.npz exists"),
    ("pool-header-corrupt", lambda run: write(run / "pool" / "pool.json", "{"), [],
     "pool.json is unreadable"),
    ("run-config-corrupt", lambda run: write(run / "config.yaml", "a: [\n"), [],
     "config.yaml is unreadable"),
    ("disk-full-on-resume", "DELIBERATE_RESERVE_BYTES=1000000000000000", [], "free on the disk of"),
]  # fmt: skip


@needs_data
@pytest.mark.parametrize(
    "damage,sets,expect", [c[1:] for c in EXISTING], ids=[c[0] for c in EXISTING]
)
def test_bad_run_folder_is_refused_and_left_alone(
    damage, sets, expect, interrupted, generator, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    if isinstance(damage, str):  # not the folder: its environment
        monkeypatch.setenv(*damage.split("="))
    else:
        damage(run)
    before = snapshot(run)
    args = cli_args(run, generator)[1:] + [f"--set={s}" for s in sets]
    run_refused(capsys, monkeypatch, args, expect)
    after = snapshot(run)
    if "deleted" in expect:  # the pool re-derives its manifest from the shards it finds ...
        shutil.copy(interrupted / "pool" / "shards" / "shard-000001.npz", run / "pool" / "shards")
        assert len(Pool(run / "pool")) == 20  # ... so restoring the shard restores every row
        del before["pool/manifest.jsonl"], after["pool/manifest.jsonl"]
    assert after == before
    assert not (tmp_path / "pwned").exists()  # the pickled command never ran


def test_the_table_has_at_least_25_distinct_bad_inputs():
    ids = [c[0] for c in FRESH + ARGV + EXISTING]
    assert len(ids) == len(set(ids)) >= 25


@needs_data
def test_a_nan_learner_is_skipped_counted_and_never_makes_a_nan_image(generator, tmp_path):
    """A diverged learner (NaN weights) guides round 1: every guidance gradient is NaN."""
    out = tmp_path / "run"
    args = cli_args(out, generator)
    assert fork_run(args, "generate.batch:3") == -9  # round 1 decided and checkpointed
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["loop"]["pending"] and ckpt["loop"]["round"] == 0
    for tensor in ckpt["trainer"]["ema"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    torch.save(ckpt, out / "checkpoint.pt")
    assert fork_run(args) == 0, (tmp_path / "run.err").read_text()
    pool = Pool(out / "pool")
    rows = [r for r in pool.records() if r["round"] == 1]
    assert len(rows) == 10 and [r["guidance_skipped"] for r in rows] == [2] * 10  # 2 guided steps
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["guidance_skipped"] == 20
    # Skipped guidance is plain sampling: the stored images are exactly the unguided ones.
    images, labels = pool.get([r["id"] for r in rows])
    plain = sample(load_pixel_backend(gen_path(generator)), torch.as_tensor(labels), [r["seed"] for r in rows], SamplerSettings(steps=5, cfg=0.5, eta=0.0, scheduler="ddim")).images  # fmt: skip
    assert np.array_equal(images, to_uint8(plain).numpy())


def test_no_loader_can_run_code_from_a_file():
    """Checkpoints: weights_only; YAML: safe_load; arrays: no pickles; no remote model code."""
    src = Path(__file__).resolve().parent.parent / "src" / "deliberate"
    text = {p.name: p.read_text() for p in src.rglob("*.py")}
    calls = [(name, m) for name, t in text.items() for m in re.findall(r"torch\.load\([^)]*\)", t)]
    assert calls and all("weights_only=True" in m for _, m in calls), calls
    for name, t in text.items():
        assert not re.search(r"yaml\.(unsafe_load|full_load)\(", t), name
        # yaml.load only with config's loader, a SafeLoader subclass (no dates, aliases bounded)
        assert all(m == "Loader=_Loader" for m in re.findall(r"yaml\.load\([^,]*, (Loader=\w+)", t)), name
        assert len(re.findall(r"yaml\.load\(", t)) == len(re.findall(r"yaml\.load\([^,]*, Loader=", t)), name
        assert not re.search(r"allow_pickle\s*=\s*True|trust_remote_code|custom_pipeline", t), name
        assert "pickle.load" not in t, name
    assert "use_safetensors=True" in text["pixel.py"]  # the generator's weights
    import yaml

    from deliberate import config

    assert issubclass(config._Loader, yaml.SafeLoader)
