"""Latent backends: a tiny Stable Diffusion and a tiny DiT, saved in diffusers layout and loaded
through the path a user's SD-1.5 / DiT folder takes (conftest's sd_dir, dit_dir), have their class
prompts and ids, options and one-line errors, and run a guided Deliberate Practice round end to
end on a tiny ImageNet-style folder. The contract every backend passes: test_backend_contract.py."""

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from deliberate.cli import main  # noqa: E402
from deliberate.config import load_config  # noqa: E402
from deliberate.data.imagefolder import ClassList  # noqa: E402
from deliberate.data.pool import Pool  # noqa: E402
from deliberate.errors import DeliberateError  # noqa: E402
from deliberate.generators import load_backend  # noqa: E402
from deliberate.generators.base import to_uint8  # noqa: E402
from deliberate.guidance import EntropyGuidance, GuidanceSettings  # noqa: E402
from deliberate.practice import PracticeConfig, run_practice  # noqa: E402
from deliberate.sampling import SamplerSettings, sample  # noqa: E402
from tests.helpers import (  # noqa: E402
    CLASSES,
    NAMES,
    WNIDS,
    LinearLearner,
    latent_settings,
    write_imagefolder,
)


@pytest.mark.parametrize("kind", ["stable_diffusion", "dit"])
def test_class_names_prompts_ids_and_image_size(kind, sd_dir, dit_dir):
    """What only the latent kinds have (the contract all kinds share: test_backend_contract.py)."""
    path = sd_dir if kind == "stable_diffusion" else dit_dir
    backend = load_backend(latent_settings(kind, path), classes=CLASSES)
    labels = torch.tensor([0, 1, 2, 1])
    cond, null = backend.cond(labels), backend.null_cond(4)
    assert backend.class_names == NAMES
    assert backend.latent_shape == (4, 8, 8) and backend.image_shape == (3, 16, 16)
    if kind == "stable_diffusion":  # prompt embeddings are cached per class, differ by class
        assert backend.prompts[2] == "a photo of a school bus"
        assert torch.equal(cond[1], cond[3]) and not torch.equal(cond[0], cond[1])
        assert torch.equal(backend.cond(torch.tensor([1]))[0], cond[1])
    else:
        assert cond.tolist() == [1, 281, 779, 281] and null.tolist() == [1000] * 4
    smaller = load_backend(latent_settings(kind, path, image_size=12), classes=CLASSES)
    assert smaller.identifier != backend.identifier and smaller.image_shape == (3, 12, 12)
    assert smaller.decode(torch.randn(1, *backend.latent_shape)).shape == (1, 3, 12, 12)


def test_options_dtype_checkpointing_and_errors(sd_dir, tmp_path):
    half = load_backend(latent_settings("stable_diffusion", sd_dir, dtype="bfloat16",
                                        gradient_checkpointing=True), classes=CLASSES)  # fmt: skip
    assert next(half.denoiser.parameters()).dtype == torch.bfloat16
    assert half.denoiser.is_gradient_checkpointing
    x = torch.randn(2, *half.latent_shape)
    learner = LinearLearner((3, 16, 16), 3).eval().requires_grad_(False)
    hook = EntropyGuidance(half, learner, GuidanceSettings(omega=0.05))
    out = sample(half, torch.tensor([0, 1]), [1, 2], SamplerSettings(steps=2), guidance=hook, guided_steps=[0])
    assert (
        out.images.dtype == torch.float32
        and torch.isfinite(out.images).all()
        and x.isfinite().all()
    )
    broken = tmp_path / "broken"
    shutil.copytree(sd_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    with pytest.raises(DeliberateError, match="cannot load the UNet .*corrupt") as e:
        load_backend(latent_settings("stable_diffusion", broken), classes=CLASSES)
    assert "\n" not in str(e.value)
    with pytest.raises(DeliberateError, match="missing model_index.json, unet"):
        (tmp_path / "empty").mkdir()
        load_backend(latent_settings("stable_diffusion", tmp_path / "empty"), classes=CLASSES)
    with pytest.raises(DeliberateError, match="WordNet ids"):
        load_backend(latent_settings("stable_diffusion", sd_dir), classes=ClassList(WNIDS, WNIDS))
    with pytest.raises(DeliberateError, match=r"\{name\}"):
        load_backend(latent_settings("stable_diffusion", sd_dir, prompt="a photo"), classes=CLASSES)
    with pytest.raises(DeliberateError, match="ImageNet-1k id"):
        load_backend(latent_settings("dit", sd_dir), classes=ClassList(WNIDS, NAMES))
    with pytest.raises(DeliberateError, match="neither an existing folder nor a hub id"):
        load_backend(latent_settings("stable_diffusion", tmp_path / "nope"), classes=CLASSES)


# -- a guided DP round end to end ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stable_diffusion", "dit"])
def test_guided_dp_round_end_to_end(kind, sd_dir, dit_dir, tmp_path):
    data = tmp_path / "imagenet"
    write_imagefolder(data)
    ood = tmp_path / "imagenet-r"  # two of the three classes, plus one the subset lacks
    write_imagefolder(ood, per_split=(("x", 2),))
    shutil.rmtree(ood / "x" / WNIDS[0])
    (ood / "x" / "n09999999").mkdir()
    path = sd_dir if kind == "stable_diffusion" else dit_dir
    overrides = {
        "generator": {"kind": kind, "path": str(path), "batch_size": 4,
                      "sampler": {"steps": 3, "cfg": 2.0}},
        "guidance": {"omega": 0.05, "every": 1, "until": 1.0},
        "learner": {"arch": "small_resnet", "iterations": 30, "batch_size": 8, "ema_decay": 0.9},
        "practice": {"initial": 6, "per_round": 3, "max_images": 9, "patience": 1,
                     "patience_mode": "fixed", "eval_every": 3, "test_every": 0},
        "data": {"kind": "imagefolder", "imagefolder": {
            "root": str(data), "classes": str(data / "classes.txt"), "image_size": 16,
            "workers": 0, "ood": {"imagenet_r": str(ood / "x")}}},
        "threads": 1,
    }  # fmt: skip
    cfg = load_config(PracticeConfig, None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    summary = run_practice(cfg, tmp_path / "run", progress=False)
    pool = Pool(tmp_path / "run" / "pool")
    records = pool.records()
    assert summary["pool_size"] == len(pool) == 9 and summary["rounds"] == 1
    backend = load_backend(cfg.generator, classes=CLASSES)
    assert pool.class_names == list(NAMES) and pool.image_shape == (16, 16, 3)
    assert {r["generator"] for r in records} == {backend.identifier}
    guided = [r for r in records if r["round"] == 1]
    assert len(guided) == 3 and all(r["omega"] == 0.05 and r["fingerprint"] for r in guided)
    assert all(np.isfinite(r["entropy"]) for r in guided)
    assert summary["test_acc"] is not None and 0 <= summary["test_acc"] <= 1
    # The round's first image equals a fresh sample of its seed with the same learner? Its plain
    # twin at least differs: guidance moved it.
    images, labels = pool.get([guided[0]["id"]])
    plain = sample(backend, torch.as_tensor(labels), [guided[0]["seed"]], SamplerSettings(steps=3, cfg=2.0)).images
    assert not np.array_equal(to_uint8(plain).numpy(), images)
    assert summary["ood"]["imagenet_r"]["classes"] == 2
    assert summary["ood"]["imagenet_r"]["images"] == 4
    assert json.loads((tmp_path / "run" / "ood.json").read_text()) == summary["ood"]


def test_generate_command_samples_a_latent_backend(sd_dir, tmp_path):
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
    argv = ["generate", "--kind", "stable_diffusion", "--generator", str(sd_dir), "--class-names",
            str(tmp_path / "names.txt"), "--per-class", "2", "--steps", "2", "--cfg", "3",
            "--out", str(tmp_path / "pool"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    pool = Pool(tmp_path / "pool")
    assert len(pool) == 6 and pool.class_names == list(NAMES) and pool.image_shape == (16, 16, 3)
    assert (tmp_path / "pool" / "samples.png").is_file()
    assert main(["generate", "--kind", "dit", "--generator", str(sd_dir), "--per-class", "1",
                 "--out", str(tmp_path / "p2")]) == 2  # fmt: skip


def test_prune_runs_with_stable_diffusion_on_an_imagefolder(sd_dir, tmp_path):
    """Oversample-then-prune goes through load_backend / load_split like `run`: Fig. 5 at scale."""
    data = tmp_path / "imagenet"
    write_imagefolder(data)
    overrides = {
        "generator": {"kind": "stable_diffusion", "path": str(sd_dir), "batch_size": 4,
                      "sampler": {"steps": 2, "cfg": 2.0}},
        "learner": {"arch": "small_resnet", "iterations": 12, "batch_size": 8, "ema_decay": 0.9},
        "practice": {"initial": 6, "per_round": 0, "max_images": 6, "eval_every": 6,
                     "test_every": 0},
        "prune": {"ratio": 2, "selected": 3},
        "data": {"kind": "imagefolder", "imagefolder": {
            "root": str(data), "classes": str(data / "classes.txt"), "image_size": 16,
            "workers": 0}},
        "threads": 1,
    }  # fmt: skip
    sets = [f"--set={k}={json.dumps(v)}" for k, v in overrides.items()]
    config = tmp_path / "prune.yaml"
    config.write_text("{}\n")
    assert main(["prune", str(config), "--out", str(tmp_path / "run"), "--quiet", *sets]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["kind"], summary["candidates"], summary["pool_size"]) == ("prune", 6, 9)
    cands = Pool(tmp_path / "run" / "candidates")
    assert len(cands) == 6 and cands.class_names == list(NAMES)
    assert all(np.isfinite(r["entropy"]) for r in cands.records())  # scored by the scorer
    kept = json.loads((tmp_path / "run" / "selection.json").read_text())["candidate_ids"]
    assert len(kept) == 3 and Pool(tmp_path / "run" / "train" / "pool").image_shape == (16, 16, 3)
