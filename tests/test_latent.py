"""Latent backends: a tiny Stable Diffusion and a tiny DiT, saved in diffusers layout and loaded
through the path a user's SD-1.5 / DiT folder takes, pass the backend contract and run a guided
Deliberate Practice round end to end on a tiny ImageNet-style folder."""

import json
import shutil
import string

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from deliberate.cli import main  # noqa: E402
from deliberate.config import load_config  # noqa: E402
from deliberate.data.imagefolder import ClassList  # noqa: E402
from deliberate.data.pool import Pool  # noqa: E402
from deliberate.errors import DeliberateError  # noqa: E402
from deliberate.generators import GeneratorSettings, load_backend  # noqa: E402
from deliberate.generators.base import to_uint8  # noqa: E402
from deliberate.generators.latent import LatentSettings  # noqa: E402
from deliberate.guidance import EntropyGuidance, GuidanceSettings  # noqa: E402
from deliberate.practice import PracticeConfig, run_practice  # noqa: E402
from deliberate.sampling import SamplerSettings, sample  # noqa: E402
from tests.test_generator import tiny_backend  # noqa: E402
from tests.test_imagefolder import IDS, NAMES, WNIDS, write_imagefolder  # noqa: E402

MAX_LEN = 12


def tiny_vae():
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=16,
    )  # fmt: skip


def write_tokenizer(folder):
    """A real CLIP BPE tokenizer from a tiny vocabulary, in SD-1.5's tokenizer/ layout."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase + string.digits:
            vocab[c + suffix] = len(vocab)
    vocab.update({"ph": len(vocab), "oto</w>": len(vocab) + 1, "ot": len(vocab) + 2})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\np h\no t\not o</w>\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}  # fmt: skip
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    config = {**special, "model_max_length": MAX_LEN, "do_lower_case": True,
              "tokenizer_class": "CLIPTokenizer"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return len(vocab)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    """A tiny SD pipeline written by diffusers' own save_pretrained, tokenizer as SD-1.5 ships it."""
    root = tmp_path_factory.mktemp("sd")
    vocab_size = write_tokenizer(root / "tok")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        attention_head_dim=4, norm_num_groups=8,
    )  # fmt: skip
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=MAX_LEN, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    ))  # fmt: skip
    # SD-1.5 ships a PNDM scheduler config; the backend samples with DDIM from the same betas.
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    tok = CLIPTokenizer.from_pretrained(root / "tok")
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)  # fmt: skip
    pipe.save_pretrained(root / "sd")
    shutil.rmtree(root / "sd" / "tokenizer")
    shutil.copytree(root / "tok", root / "sd" / "tokenizer")
    return root / "sd"


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory):
    """A tiny DiT (1,000 ImageNet classes, learned sigma) saved by diffusers' DiTPipeline."""
    root = tmp_path_factory.mktemp("dit")
    torch.manual_seed(0)
    net = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
        num_layers=1, sample_size=8, patch_size=2, norm_num_groups=8, num_embeds_ada_norm=1000,
    )  # fmt: skip
    sched = DDIMScheduler(
        beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False
    )
    DiTPipeline(transformer=net, vae=tiny_vae(), scheduler=sched).save_pretrained(root / "dit")
    return root / "dit"


CLASSES = ClassList(WNIDS, NAMES, IDS)


def settings(kind, path, **latent):
    return GeneratorSettings(kind=kind, path=str(path), latent=LatentSettings(**latent))


@pytest.fixture(scope="module")
def pixel_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pixel") / "tiny"
    tiny_backend(seed=1).save(path)
    return path


@pytest.fixture(scope="module", params=["pixel", "stable_diffusion", "dit"])
def loaded(request, pixel_dir, sd_dir, dit_dir):
    """(kind, folder, backend) for every kind, loaded as a user's folder would be: the latent
    backends pass the same contract tests as the pixel one."""
    kind = request.param
    path = {"pixel": pixel_dir, "stable_diffusion": sd_dir, "dit": dit_dir}[kind]
    return (
        kind,
        path,
        load_backend(settings(kind, path), classes=None if kind == "pixel" else CLASSES),
    )


@pytest.fixture(scope="module")
def backend(loaded):
    return loaded[2]


class LinearLearner(torch.nn.Module):
    """A fixed linear classifier, far from uniform, so entropy gradients are informative."""

    def __init__(self, image_shape=(3, 16, 16), num_classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(int(np.prod(image_shape)), num_classes)
        torch.nn.init.normal_(self.fc.weight, std=0.1)

    def forward(self, images01):
        return self.fc(images01.flatten(1) * 2 - 1)

    def entropy(self, images01):
        logp = torch.log_softmax(self(images01), -1)
        return -(logp.exp() * logp).sum(-1)


def test_contract_shapes_classes_and_identifier(loaded):
    kind, path, backend = loaded
    assert backend.num_classes == len(backend.class_names) >= 3
    assert backend.scheduler_config["prediction_type"] in ("epsilon", "v_prediction")
    labels = torch.tensor([0, 1, 2, 1])
    cond, null = backend.cond(labels), backend.null_cond(4)
    assert len(backend.concat_cond(cond, null)) == 8 and not torch.equal(cond[0], null[0])
    x = torch.randn(4, *backend.latent_shape)
    out = backend.model_output(x, torch.full((4,), 500), cond)  # DiT: learned sigma dropped
    assert out.shape == x.shape and out.dtype == torch.float32
    assert backend.decode(x).shape == (4, *backend.image_shape)
    if kind == "pixel":
        assert backend.identifier.startswith("pixel-")
        return
    assert backend.class_names == NAMES
    assert backend.latent_shape == (4, 8, 8) and backend.image_shape == (3, 16, 16)
    if kind == "stable_diffusion":  # prompt embeddings are cached per class, differ by class
        assert backend.prompts[2] == "a photo of a school bus"
        assert torch.equal(cond[1], cond[3]) and not torch.equal(cond[0], cond[1])
        assert torch.equal(backend.cond(torch.tensor([1]))[0], cond[1])
    else:
        assert cond.tolist() == [1, 281, 779, 281] and null.tolist() == [1000] * 4
    again = load_backend(settings(kind, path), classes=CLASSES)
    assert again.identifier == backend.identifier
    assert backend.identifier.startswith("sd-" if kind == "stable_diffusion" else "dit-")
    smaller = load_backend(settings(kind, path, image_size=12), classes=CLASSES)
    assert smaller.identifier != backend.identifier and smaller.image_shape == (3, 12, 12)
    assert smaller.decode(torch.randn(1, *backend.latent_shape)).shape == (1, 3, 12, 12)


def test_sampling_is_deterministic_per_seed_whatever_the_batch(backend):
    labels, seeds = torch.tensor([0, 1, 2, 0]), [5, 6, 7, 8]
    full = sample(backend, labels, seeds, SamplerSettings(steps=3, cfg=2.0)).images
    assert full.shape == (4, *backend.image_shape) and full.min() >= 0 and full.max() <= 1
    assert torch.equal(full, sample(backend, labels, seeds, SamplerSettings(steps=3, cfg=2.0)).images)
    halves = torch.cat([sample(backend, labels[i : i + 2], seeds[i : i + 2], SamplerSettings(steps=3, cfg=2.0)).images
                        for i in (0, 2)])  # fmt: skip
    assert torch.equal(to_uint8(full), to_uint8(halves))
    assert not torch.equal(full, sample(backend, labels, [9, 10, 11, 12], SamplerSettings(steps=3, cfg=2.0)).images)
    assert not torch.equal(full, sample(backend, labels, seeds, SamplerSettings(steps=3, cfg=0.0)).images)


def test_decode_is_differentiable(backend):
    x0 = torch.randn(2, *backend.latent_shape, requires_grad=True)
    images = backend.decode(x0)
    assert images.shape == (2, *backend.image_shape)
    (grad,) = torch.autograd.grad(images.sum(), x0)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_guidance_raises_learner_entropy_for_the_same_seeds(backend):
    """One entropy-ascent step at the last sampling step, dx̂0/dx_t taken as the identity (a
    random denoiser's Jacobian is arbitrary): the final images' entropy rises for the same seeds."""
    learner = LinearLearner(backend.image_shape, backend.num_classes).eval().requires_grad_(False)
    labels, seeds = torch.arange(8) % 3, list(range(100, 108))
    plain = sample(backend, labels, seeds, SamplerSettings(steps=3, cfg=1.0)).images
    hook = EntropyGuidance(backend, learner,
                           GuidanceSettings(omega=0.02, through_denoiser=False))  # fmt: skip
    guided = sample(backend, labels, seeds, SamplerSettings(steps=3, cfg=1.0), guidance=hook, guided_steps=[2])
    with torch.no_grad():
        before, after = learner.entropy(plain), learner.entropy(guided.images)
    assert (after > before).float().mean() >= 0.75, (before, after)
    assert after.mean() > before.mean()
    # Through the denoiser (the default), guidance runs and changes the images.
    hook = EntropyGuidance(backend, learner, GuidanceSettings(omega=0.05))
    out = sample(backend, labels, seeds, SamplerSettings(steps=3, cfg=1.0), guidance=hook, guided_steps=[0, 1])
    assert torch.isfinite(out.images).all() and not torch.equal(out.images, plain)
    assert hook.backward_passes == 16


def test_options_dtype_checkpointing_and_errors(sd_dir, tmp_path):
    half = load_backend(settings("stable_diffusion", sd_dir, dtype="bfloat16",
                                 gradient_checkpointing=True), classes=CLASSES)  # fmt: skip
    assert next(half.denoiser.parameters()).dtype == torch.bfloat16
    assert half.denoiser.is_gradient_checkpointing
    x = torch.randn(2, *half.latent_shape)
    learner = LinearLearner().eval().requires_grad_(False)
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
        load_backend(settings("stable_diffusion", broken), classes=CLASSES)
    assert "\n" not in str(e.value)
    with pytest.raises(DeliberateError, match="missing model_index.json, unet"):
        (tmp_path / "empty").mkdir()
        load_backend(settings("stable_diffusion", tmp_path / "empty"), classes=CLASSES)
    with pytest.raises(DeliberateError, match="WordNet ids"):
        load_backend(settings("stable_diffusion", sd_dir), classes=ClassList(WNIDS, WNIDS))
    with pytest.raises(DeliberateError, match=r"\{name\}"):
        load_backend(settings("stable_diffusion", sd_dir, prompt="a photo"), classes=CLASSES)
    with pytest.raises(DeliberateError, match="ImageNet-1k id"):
        load_backend(settings("dit", sd_dir), classes=ClassList(WNIDS, NAMES))
    with pytest.raises(DeliberateError, match="neither an existing folder nor a hub id"):
        load_backend(settings("stable_diffusion", tmp_path / "nope"), classes=CLASSES)


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
