"""What several test modules share: constants, tiny models and folders, run helpers.

Test modules import from here (and get the shared fixtures from conftest.py), never from one
another. The imports that load diffusers, transformers or the practice loop (seconds on a 2-core
machine) stay inside the functions that need them, so that conftest.py importing this module
costs nothing to a test file that uses none of it.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import shutil
import string
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deliberate import faults
from deliberate.cli import main
from deliberate.config import from_dict, load_config
from deliberate.data.fashion_mnist import CLASS_NAMES, DEFAULT_DIR, FILES, find_data_dir
from deliberate.data.imagefolder import ClassList
from deliberate.errors import DeliberateError

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "fmnist"


def benchmark_module(name: str):
    """A script of benchmarks/ (e.g. "headline") imported as a module, for its functions."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
TIMING_KEYS = ("seconds_generate", "seconds_guidance", "seconds_train", "seconds_eval")


def machine() -> str:
    """What float results depend on besides the code, for pins to key on: the CPU model, torch's
    vector ISA and torch's version (oneDNN picks kernels and blockings by CPU)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                 platform.processor() or platform.machine())  # fmt: skip
    return f"{model} | {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__}"


def has_data() -> bool:
    """Whether the real Fashion-MNIST files are installed."""
    try:
        find_data_dir()
    except DeliberateError:
        return False
    return True


needs_data = pytest.mark.skipif(not has_data(), reason="real Fashion-MNIST files not installed")


# -- the pixel generator and the practice loop ------------------------------------------------

TINY_UNET = {"block_out_channels": [16], "layers_per_block": 1, "norm_num_groups": 4}

# A DP run of ~10 s: 60 iterations, evaluations every 5 (two rounds at seed 0), 3 sampling steps.
TINY_RUN = ["learner.iterations=60", "learner.batch_size=16", "learner.input_size=14",
            "learner.ema_decay=0.9", "learner.lr=0.01", "practice.eval_every=5",
            "practice.test_every=0", "practice.patience=1", "practice.patience_mode=fixed",
            "practice.initial=40", "practice.per_round=20", "practice.max_images=80",
            "generator.sampler.steps=3", "generator.batch_size=20", "guidance.every=1",
            "threads=1"]  # fmt: skip


def tiny_backend(seed=0):
    """A tiny random pixel-space generator for Fashion-MNIST's classes."""
    from deliberate.generators.pixel import PixelBackend, PixelModelConfig

    torch.manual_seed(seed)
    return PixelBackend.from_config(from_dict(PixelModelConfig, TINY_UNET), CLASS_NAMES).eval()


def shipped_or_tiny_generator(tmp_path_factory) -> str:
    """The shipped generator when it loads, else a tiny random one (the loop does not care)."""
    from deliberate.generators.pixel import DEFAULT_GENERATOR, load_pixel_backend

    try:
        load_pixel_backend(DEFAULT_GENERATOR)
        return str(DEFAULT_GENERATOR)
    except DeliberateError:  # not trained yet (or being replaced right now)
        pass
    path = tmp_path_factory.mktemp("gen") / "tiny"
    tiny_backend(seed=1).save(path)
    return str(path)


def tiny_overrides(generator):
    return [f"generator.path={generator}", "practice.branch_outs=true"]


def tiny_config(generator, *extra):
    """configs/fmnist/tiny.yaml on `generator`, with branch-outs, and `extra` overrides."""
    from deliberate.practice import PracticeConfig

    return load_config(PracticeConfig, CONFIGS / "tiny.yaml", [*tiny_overrides(generator), *extra])


# -- `deliberate run` in a forked child (test_faults, test_validation) ---------------------------

TORCH_DEFAULT_SEED = 67280421310721  # a fresh Python process's torch seed (forks must match it)
# tiny.yaml cut down further: 20 plain images, one guided round of 10, a branch-out, 40 steps.
SMALL = ["practice.initial=20", "practice.per_round=10", "practice.max_images=40",
         "generator.batch_size=10", "learner.iterations=40", "learner.batch_size=16",
         "learner.input_size=7", "practice.branch_outs=true"]  # fmt: skip


def cli_args(out: Path, generator: str) -> list[str]:
    """`deliberate run` on SMALL; `generator` is the fixture's "generator.path=..,data_dir=.." pair."""
    sets = [f"--set={s}" for s in [*generator.split(","), *SMALL]]
    return ["run", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet", *sets]


def fork_run(args: list[str], fault: str = "", log: Path | None = None,
             counts: Path | None = None) -> int:  # fmt: skip
    """Run `deliberate <args>` in a forked child; its exit code, or -signal if it was killed.
    With `counts`, the child writes how often it reached each kill point there (JSON)."""
    log = log or Path(args[args.index("--out") + 1] + ".log")
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 99
        try:
            out = open(log.with_suffix(".out"), "w")  # noqa: SIM115 (closed by _exit)
            err = open(log.with_suffix(".err"), "w")  # noqa: SIM115
            os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
            sys.stdout, sys.stderr = out, err
            torch.manual_seed(TORCH_DEFAULT_SEED)
            faults.arm(fault, count=counts is not None)
            code = main(args)
            if counts is not None:
                counts.write_text(json.dumps(faults.hit_counts()))
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def tiny_generator_dir(tmp_path_factory) -> Path:
    """A tiny random Fashion-MNIST-shaped generator (10 classes, 28x28 grey) saved to a folder."""
    path = tmp_path_factory.mktemp("gen") / "tiny"
    tiny_backend(seed=1).save(path)
    return path


def make_generator(tmp_path_factory) -> str:
    """A tiny random generator, and Fashion-MNIST unzipped once (gunzip costs ~1 s per run)."""
    path = tiny_generator_dir(tmp_path_factory)
    data = tmp_path_factory.mktemp("fmnist")
    if has_data():
        for stem in FILES.values():
            (data / stem).write_bytes(gzip.decompress((DEFAULT_DIR / f"{stem}.gz").read_bytes()))
    return f"generator.path={path},data_dir={data}"


# -- ImageNet-style folders ---------------------------------------------------------------------

WNIDS = ("n01443537", "n02123045", "n04146614")  # goldfish, tabby, school bus
NAMES = ("goldfish", "tabby", "school bus")
IDS = (1, 281, 779)  # their ImageNet-1k indices in the synthetic mapping write_imagefolder writes
CLASSES = ClassList(WNIDS, NAMES, IDS)


def write_imagefolder(root, per_split=(("train", 4), ("val", 2))):
    """Tiny ImageNet-style folders (one colour per class, noisy) and a 1,000-line synset mapping."""
    rng = np.random.default_rng(0)
    colours = np.array([[220, 120, 20], [120, 120, 120], [240, 200, 0]])
    for split, n in per_split:
        for k, wnid in enumerate(WNIDS):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(colours[k] + rng.normal(0, 40, (20, 24, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / wnid / f"{i}.png")
    lines = [f"n{90000000 + i:08d} filler {i}" for i in range(1000)]
    for wnid, name, i in zip(WNIDS, NAMES, IDS, strict=True):
        lines[i] = f"{wnid} {name}, a synonym"
    (root / "LOC_synset_mapping.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(WNIDS) + "\n")


# -- tiny latent backends (need transformers) ---------------------------------------------------

MAX_LEN = 12


def has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


needs_transformers = pytest.mark.skipif(not has_transformers(), reason="needs transformers")


def tiny_vae():
    from diffusers import AutoencoderKL

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


def write_tiny_sd(root: Path) -> Path:
    """A tiny SD pipeline written by diffusers' own save_pretrained, tokenizer as SD-1.5 ships it."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

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


def write_tiny_dit(root: Path) -> Path:
    """A tiny DiT (1,000 ImageNet classes, learned sigma) saved by diffusers' DiTPipeline."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

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


def latent_settings(kind, path, **latent):
    """The GeneratorSettings of a `kind` backend in `path`; `latent` sets LatentSettings fields."""
    from deliberate.generators import GeneratorSettings
    from deliberate.generators.latent import LatentSettings

    return GeneratorSettings(kind=kind, path=str(path), latent=LatentSettings(**latent))


# -- learners ----------------------------------------------------------------------------------


class LinearLearner(torch.nn.Module):
    """A fixed linear classifier, far from uniform (weights of sd `std`), so entropy gradients
    are informative; the same weights for the same arguments."""

    def __init__(self, image_shape, num_classes, std=0.1):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(int(np.prod(image_shape)), num_classes)
        torch.nn.init.normal_(self.fc.weight, std=std)

    def forward(self, images01):
        return self.fc(images01.flatten(1) * 2 - 1)

    def entropy(self, images01):
        logp = torch.log_softmax(self(images01), -1)
        return -(logp.exp() * logp).sum(-1)


# -- foreign models: diffusers-saved pixel UNets, fixed classifiers as guides -------------------


def tiny_class_unet(num_class_embeds, channels=3, size=8, seed=0):
    """A tiny random class-conditional diffusers UNet2DModel (two levels, 8 and 16 channels)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2, norm_num_groups=4, num_class_embeds=num_class_embeds,
    )  # fmt: skip


def write_diffusers_pixel(folder: Path, num_class_embeds=4, *, pipeline=True, channels=3,
                          size=8, scheduler=None) -> Path:  # fmt: skip
    """A class-conditional pixel model as diffusers itself saves it: `DDPMPipeline.save_pretrained`
    (model_index.json, unet/, scheduler/), or with pipeline=False a bare unet/ + scheduler/ pair."""
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = tiny_class_unet(num_class_embeds, channels, size)
    scheduler = scheduler or DDPMScheduler()
    if pipeline:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    else:
        unet.save_pretrained(folder / "unet")
        scheduler.save_pretrained(folder / "scheduler")
    return folder


def guide_learner(image_shape, num_classes, seed=0):
    """A small_resnet learner with a head scaled up so that its predictions are far from uniform
    (a fresh one's entropy is ~log K: nothing to raise); the same weights for the same arguments."""
    from deliberate.learner import build_learner

    torch.manual_seed(seed)
    learner = build_learner("small_resnet", num_classes, image_shape[0], image_shape[-1]).eval()
    with torch.no_grad():
        learner.backbone.head.weight.mul_(30)
    return learner.requires_grad_(False)


def write_guide(folder: Path, image_shape, num_classes, seed=0, **side) -> str:
    """`guide_learner`'s weights as a fixed classifier: small_resnet:clf.safetensors + its side
    file (the learner's own input size and [-1, 1] normalisation, updated by `side`)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    learner = guide_learner(image_shape, num_classes, seed)
    weights = folder / "clf.safetensors"
    save_file({k: v.contiguous() for k, v in learner.backbone.state_dict().items()}, weights)
    c = image_shape[0]
    info = {"input_size": image_shape[-1], "mean": [0.5] * c, "std": [0.5] * c, **side}
    (folder / "clf.safetensors.json").write_text(json.dumps(info))
    return f"small_resnet:{weights}"
