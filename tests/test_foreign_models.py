"""Models we did not make: a class-conditional UNet2DModel that diffusers saved itself (kind pixel
without deliberate.json), and a fixed classifier that guides (`generate --guide ARCH:WEIGHTS`).
Both also run through the shared contracts: test_backend_contract.py (the diffusers folder as a
backend, the fixed guide as the learner of the guidance checks) and test_guidance.py."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deliberate.cli import main
from deliberate.data.imagefolder import ClassList
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError
from deliberate.generators import GeneratorSettings, load_backend
from deliberate.guidance import learner_fingerprint
from deliberate.guide import load_guide
from deliberate.learner import IMAGENET_MEAN, IMAGENET_STD
from deliberate.rundir import RunDir
from deliberate.sampling import SamplerSettings, initial_noise, sample
from tests.helpers import (
    CLASS_NAMES,
    guide_learner,
    tiny_generator_dir,
    write_diffusers_pixel,
)


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


# -- a fixed classifier as the guide ------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """A tiny random Fashion-MNIST-shaped generator (10 classes, 28x28 grey)."""
    return tiny_generator_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def guide_files(tmp_path_factory):
    """One learner, twice: as a run folder (config.yaml + checkpoint.pt) for --learner, and as a
    state_dict .pt with a stem-named side file (clf.json) for --guide small_resnet:clf.pt."""
    root = tmp_path_factory.mktemp("guide")
    learner = guide_learner((1, 28, 28), 10)
    (root / "run").mkdir()
    (root / "run" / "config.yaml").write_text("learner:\n  arch: small_resnet\n")
    RunDir(root / "run").save_checkpoint({"trainer": {"ema": learner.state_dict()}, "loop": {}})
    torch.save(learner.state_dict(), root / "clf.pt")  # keys backbone.*: a Learner's own
    (root / "clf.json").write_text(json.dumps({"input_size": 28, "mean": [0.5], "std": [0.5]}))
    return root


def test_a_fixed_guide_steers_exactly_as_the_same_learner_from_a_run(
    generator, guide_files, tmp_path
):
    argv = ["generate", "--generator", generator, "--per-class", 1, "--steps", 2, "--quiet"]
    guide = f"small_resnet:{guide_files / 'clf.pt'}"
    assert (
        run(*argv, "--out", tmp_path / "learner", "--learner", guide_files / "run", "--omega", 0.2)
        == 0
    )
    assert run(*argv, "--out", tmp_path / "guide", "--guide", guide, "--omega", 0.2) == 0
    assert run(*argv, "--out", tmp_path / "off", "--guide", guide, "--omega", 0) == 0
    assert run(*argv, "--out", tmp_path / "plain") == 0
    pools = {name: Pool(tmp_path / name) for name in ("learner", "guide", "off", "plain")}
    images = {name: pool.load_all()[0] for name, pool in pools.items()}
    assert np.array_equal(images["guide"], images["learner"])  # the same steering, bit for bit
    assert np.array_equal(images["off"], images["plain"])  # ω = 0 is plain sampling
    assert not np.array_equal(images["guide"], images["plain"])
    by_learner, by_guide = pools["learner"].records(), pools["guide"].records()
    for key in ("entropy", "learner_pred", "fingerprint", "omega"):
        assert [r[key] for r in by_guide] == [r[key] for r in by_learner], key
    backend = load_backend(GeneratorSettings(path=str(generator)))
    assert by_guide[0]["fingerprint"] == learner_fingerprint(load_guide(guide, backend))
    assert {r["guide"] for r in by_guide} == {"small_resnet:clf.pt"}


def test_a_torchvision_guide_with_flags_and_its_own_class_order(generator, tmp_path):
    """mobilenet_v3_small's plain state dict, ImageNet normalisation, outputs in reverse class
    order: the guide's logits are the network's on the resized, normalised RGB copy, reordered."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "mnet.pth")
    side = {"input_size": 32, "mean": [0.1, 0.2, 0.3], "std": [1, 1, 1], "num_classes": 10,
            "classes": list(reversed(CLASS_NAMES))}  # fmt: skip
    (tmp_path / "mnet.pth.json").write_text(json.dumps(side))
    backend = load_backend(GeneratorSettings(path=str(generator)))
    spec = f"mobilenet_v3_small:{tmp_path / 'mnet.pth'}"
    guide = load_guide(spec, backend, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))  # flags win
    x = torch.rand(2, 1, 28, 28)
    rgb = F.interpolate(x, size=(32, 32), mode="bilinear").expand(-1, 3, -1, -1)
    mean, std = (
        torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
        torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        assert torch.allclose(guide(x), net((rgb - mean) / std).flip(-1), atol=1e-5)
    (tmp_path / "mnet.pth.json").unlink()  # flags alone state the input
    assert run("generate", "--generator", generator, "--per-class", 1, "--steps", 2, "--quiet",
               "--out", tmp_path / "pool", "--guide", spec, "--guide-size", 32, "--guide-mean",
               *IMAGENET_MEAN, "--guide-std", *IMAGENET_STD) == 0  # fmt: skip
    records = Pool(tmp_path / "pool").records()
    assert len(records) == 10 and records[0]["guide"] == "mobilenet_v3_small:mnet.pth"
    assert all(np.isfinite(r["entropy"]) for r in records)


def _seven_classes(root):
    torch.save(guide_learner((1, 28, 28), 7).state_dict(), root / "w.pt")
    return "w.pt"


def _side(**side):
    def write(root):
        info = {"input_size": 28, "mean": [0.5], "std": [0.5], **side}
        shutil.copy(root / "clf.pt", root / "w.pt")
        (root / "w.pt.json").write_text(json.dumps(info))
        return "w.pt"

    return write


def _pickled(root):
    name = _side()(root)
    torch.save(torch.nn.Linear(2, 2), root / name)
    return name


BAD_GUIDES = {
    "no arch": (["--guide", "{clf}"], "must be ARCH:WEIGHTS"),
    "unknown arch": (["--guide", "nonet:{clf}"], "architecture 'nonet' is unknown"),
    "no weights": (["--guide", "small_resnet:{root}/none.pt"], "none.pt is not a file"),
    "no side file": (["--guide", "small_resnet:{root}/bare.pt"], "state its input_size, mean, std"),
    "side says 7": (["--guide", "small_resnet:{root}/{w}"], "the guide has 7 outputs but the generator has 10 classes"),
    "weights of 7": (["--guide", "small_resnet:{root}/{w}", "--guide-size", "28", "--guide-mean",
                      "0.5", "--guide-std", "0.5"], "the guide has 7 outputs but the generator has 10"),
    "pickled module": (["--guide", "small_resnet:{root}/{w}"], "pickled Python objects"),
    "typo in side file": (["--guide", "small_resnet:{root}/{w}"], "did you mean 'input_size'?"),
    "class order": (["--guide", "small_resnet:{root}/{w}"], "must name each of the generator's 10"),
    "grey for torchvision": (["--guide", "resnet18:{root}/{w}"], "torchvision models take 3"),
    "with --learner": (["--guide", "small_resnet:{clf}", "--learner", "{root}/run"], "exclude each other"),
    "flags alone": (["--guide-size", "28"], "need --guide ARCH:WEIGHTS"),
}  # fmt: skip
WRITE = {"side says 7": _side(num_classes=7), "weights of 7": _seven_classes,
         "pickled module": _pickled, "typo in side file": _side(inputsize=3),
         "class order": _side(classes=CLASS_NAMES[:9]), "grey for torchvision": _side()}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_GUIDES))
def test_a_bad_guide_is_one_line(generator, guide_files, tmp_path, capsys, case):
    root = shutil.copytree(guide_files, tmp_path / "guide")
    shutil.copy(root / "clf.pt", root / "bare.pt")
    w = WRITE[case](root) if case in WRITE else ""
    flags, message = BAD_GUIDES[case]
    flags = [f.format(clf=root / "clf.pt", root=root, w=w) for f in flags]
    refused(capsys, tmp_path, message, "generate", "--generator", generator, "--per-class", 1,
            "--out", tmp_path / "pool", "--steps", 1, "--quiet", *flags)  # fmt: skip
