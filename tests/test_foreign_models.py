"""Models we did not make: a class-conditional UNet2DModel that diffusers saved itself (kind pixel
without deliberate.json), and a fixed classifier that guides (`generate --guide ARCH:WEIGHTS`).
Both also run through the shared contracts: test_backend_contract.py (the diffusers folder as a
backend, the fixed guide as the learner of the guidance checks) and test_guidance.py."""

import json
import shutil

import numpy as np
import pytest
import torch

from deliberate.cli import main
from deliberate.data.imagefolder import ClassList
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError
from deliberate.generators import GeneratorSettings, load_backend
from deliberate.sampling import SamplerSettings, initial_noise, sample
from tests.helpers import write_diffusers_pixel


def run(*argv):
    return main([str(a) for a in argv])


def refused(capsys, tmp_path, message, *argv):
    """`deliberate <argv>` exits 2 with one line holding `message`, and writes no pool."""
    assert run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("deliberate: error:")
    assert not (tmp_path / "pool").exists()


# -- a diffusers-saved pixel model ----------------------------------------------------------


@pytest.fixture(scope="module")
def ddpm_dir(tmp_path_factory):
    """DDPMPipeline(unet, DDPMScheduler()).save_pretrained: 4 class embeddings, 8x8 RGB."""
    return write_diffusers_pixel(tmp_path_factory.mktemp("ddpm") / "ddpm", 4)


def test_a_pipeline_folder_generates_through_the_cli(ddpm_dir, tmp_path):
    assert not (ddpm_dir / "deliberate.json").exists() and (ddpm_dir / "model_index.json").exists()
    argv = ["generate", "--generator", ddpm_dir, "--per-class", 2, "--steps", 2, "--quiet"]
    assert run(*argv, "--out", tmp_path / "pool", "--cfg", 0) == 0
    pool = Pool(tmp_path / "pool")
    images, labels = pool.load_all()
    assert images.shape == (8, 8, 8, 3) and images.dtype == np.uint8 and images.std() > 0
    assert np.bincount(labels).tolist() == [2] * 4 and pool.class_names == ["0", "1", "2", "3"]
    backend = load_backend(GeneratorSettings(path=str(ddpm_dir), sampler=SamplerSettings(cfg=0)))
    assert {r["generator"] for r in pool.records()} == {backend.identifier}
    assert backend.identifier.startswith("pixel-") and backend.null_class is None
    assert backend.scheduler_config["prediction_type"] == "epsilon"  # DDPMScheduler's
    # Three class names for four embeddings: the last is the null class, so CFG samples.
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nbird\n")
    assert run(*argv, "--out", tmp_path / "cfg", "--cfg", 1, "--class-names", names) == 0
    cfg = Pool(tmp_path / "cfg")
    assert cfg.class_names == ["cat", "dog", "bird"] and len(cfg) == 6
    same_seeds = pool.load_all()[0][[0, 1, 2]]  # seeds 0..2 are classes 0..2 in both requests
    assert not np.array_equal(cfg.load_all()[0][:3], same_seeds)  # λ = 1 changed the images


def test_a_bare_unet_and_scheduler_sample_as_diffusers_own_ddim_loop(tmp_path):
    """A unet/ + scheduler/ pair (no model_index.json), grey 16x16, v-prediction, cosine betas:
    our sampler's images equal diffusers' own DDIM + CFG loop over the same UNet, mapped from
    [-1, 1] as DDPMPipeline maps them. Prediction type, schedule and pixel range are read right."""
    from diffusers import DDIMScheduler, UNet2DModel

    sched = DDIMScheduler(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2",
                          clip_sample=False)  # fmt: skip
    path = write_diffusers_pixel(tmp_path / "pair", 3, pipeline=False, channels=1, size=16,
                                 scheduler=sched)  # fmt: skip
    backend = load_backend(
        GeneratorSettings(path=str(path)), classes=ClassList(("a", "b"), ("a", "b"))
    )
    assert backend.class_names == ("a", "b") and backend.null_class == 2
    assert backend.image_shape == backend.latent_shape == (1, 16, 16)
    labels, seeds = torch.tensor([0, 1, 1]), [5, 6, 7]
    ours = sample(backend, labels, seeds, SamplerSettings(steps=4, cfg=1.0)).images

    unet = UNet2DModel.from_pretrained(path / "unet").eval()
    theirs = DDIMScheduler.from_config(DDIMScheduler.load_config(path / "scheduler"),
                                       timestep_spacing="trailing")  # fmt: skip
    theirs.set_timesteps(4)
    x = initial_noise(seeds, (1, 16, 16))
    with torch.no_grad():
        for t in theirs.timesteps:
            both = unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, torch.full((3,), 2)]))
            cond, uncond = both.sample.chunk(2)
            x = theirs.step(
                uncond + 2.0 * (cond - uncond), t, x
            ).prev_sample  # guidance_scale 1 + λ
    assert torch.allclose(ours, (x / 2 + 0.5).clamp(0, 1), atol=1e-5)


def _config(key, value):
    def edit(path):
        file = path / "unet" / "config.json"
        file.write_text(json.dumps({**json.loads(file.read_text()), key: value}))

    return edit


def _scheduler(key, value):
    def edit(path):
        file = path / "scheduler" / "scheduler_config.json"
        file.write_text(json.dumps({**json.loads(file.read_text()), key: value}))

    return edit


WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
BAD_FOLDERS = {
    "no unet config": (lambda p: (p / "unet/config.json").unlink(), "nor a diffusers one"),
    "no class embedding": (_config("num_class_embeds", None), "is not class-conditional"),
    "no weights": (lambda p: (p / WEIGHTS).unlink(), "unet has no weights; save the UNet"),
    "pickled weights": (lambda p: (p / WEIGHTS).rename(p / "unet/diffusion_pytorch_model.bin"),
                        "diffusion_pytorch_model.bin, which is never unpickled"),
    "torn weights": (lambda p: (p / WEIGHTS).write_bytes((p / WEIGHTS).read_bytes()[:500]),
                     "is corrupt"),
    "non-square": (_config("sample_size", [8, 16]), "sample_size [8, 16]"),
    "too small": (_config("sample_size", 4), "sample_size 4"),
    "latent channels": (_config("in_channels", 4), "in_channels=4, out_channels=3"),
    "learned variance": (_config("out_channels", 6), "in_channels=3, out_channels=6"),
    "text-conditional": (_config("_class_name", "UNet2DConditionModel"), "--kind stable_diffusion"),
    "no scheduler": (lambda p: shutil.rmtree(p / "scheduler"), "no scheduler/scheduler_config.json"),
    "odd prediction": (_scheduler("prediction_type", "flow"), "prediction_type 'flow'"),
    "odd betas": (_scheduler("beta_schedule", "zigzag"), "not a usable noise schedule"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_a_bad_diffusers_folder_is_one_line(ddpm_dir, tmp_path, capsys, case):
    edit, message = BAD_FOLDERS[case]
    path = shutil.copytree(ddpm_dir, tmp_path / "gen")
    edit(path)
    refused(capsys, tmp_path, message, "generate", "--generator", path, "--per-class", 1,
            "--out", tmp_path / "pool", "--cfg", 0, "--quiet")  # fmt: skip


def test_class_counts_and_cfg_without_a_null_class_are_one_line(ddpm_dir, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    argv = ["generate", "--generator", ddpm_dir, "--per-class", 1, "--out", tmp_path / "pool"]
    refused(capsys, tmp_path, "has 4 class embeddings but the data has 2 classes", *argv,
            "--class-names", names, "--cfg", 0)  # fmt: skip
    refused(capsys, tmp_path, "has no null class (4 class embeddings for 4 classes)", *argv)
    with pytest.raises(DeliberateError, match="pass --cfg 0"):  # the default cfg is 0.5
        load_backend(GeneratorSettings(path=str(ddpm_dir)))
    backend = load_backend(GeneratorSettings(path=str(ddpm_dir), sampler=SamplerSettings(cfg=0)))
    with pytest.raises(DeliberateError, match="has no null class"):  # the sampler refuses it too
        sample(backend, torch.tensor([0]), [1], SamplerSettings(steps=1, cfg=0.5))
