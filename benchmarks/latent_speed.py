"""Plain vs entropy-guided sampling speed of a Stable Diffusion 1.5-architecture backend.

Random weights with SD-1.5's exact architecture (UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder)
are enough for speed. Settings of configs/imagenet100/dp.yaml: 512² generation, 30 DDIM steps,
CFG λ = 3, guidance at steps 0, 5, ..., 25 through the UNet and the VAE decoder into a ViT-B/16
(224² after the 256² resize). The paper reports guided = 1.82x plain per image on an H100.

  python benchmarks/latent_speed.py --device cuda [--batch 8] [--dtype float16] [--checkpointing]
  python benchmarks/latent_speed.py --tiny          # a CPU smoke run with tiny components
"""

from __future__ import annotations

import argparse
import json
import statistics
import string
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from deliberate.generators.latent import LatentSettings, StableDiffusionBackend
from deliberate.guidance import EntropyGuidance, GuidanceSettings
from deliberate.learner import build_learner, inference_copy
from deliberate.sampling import SamplerSettings, sample


def tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over letters (prompts are embedded once; it does not affect speed)."""
    folder = Path(tempfile.mkdtemp())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def sd15(tiny: bool):
    """UNet, VAE and text encoder with SD-1.5's configs (or tiny ones), random weights."""
    if tiny:
        unet = UNet2DConditionModel(
            sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
            attention_head_dim=4,
        )  # fmt: skip
        vae = AutoencoderKL(
            block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4,
        )  # fmt: skip
        text = CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2)  # fmt: skip
    else:
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # SD-1.5's UNet
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
            sample_size=512,
        )  # fmt: skip
        text = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, hidden_act="quick_gelu")  # fmt: skip
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    return unet, vae, CLIPTextModel(text), dict(sched.config)


def timed(fn, device, repeats):
    """Median seconds of fn() over `repeats` runs after one warm-up run."""
    times = []
    for r in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(r)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if r:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--dtype", default="float16", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="tiny components: a CPU smoke run")
    args = ap.parse_args()
    torch.manual_seed(0)
    unet, vae, text, sched = sd15(args.tiny)
    size = 16 if args.tiny else 256
    settings = LatentSettings(dtype="float32" if args.tiny else args.dtype, image_size=size,
                              gradient_checkpointing=args.checkpointing)  # fmt: skip
    names = [f"class {c}" for c in string.ascii_lowercase[:10]]
    backend = StableDiffusionBackend(unet, vae, text, tokenizer(), sched, names, settings)
    backend._prepare(args.device)
    device = backend.device
    learner = build_learner("vit_b_16", len(names), 3, size, input_size=32 if args.tiny else 224)
    learner = learner.to(device).eval().requires_grad_(False)
    guide = inference_copy(learner)  # as rounds.guided_batch guides
    labels = torch.arange(args.batch) % len(names)
    guidance = GuidanceSettings(omega=0.05, every=5, until=1.0)
    guided_steps = guidance.guided_steps(args.steps)

    def run(hook):
        def fn(r):
            seeds = list(range(r * args.batch, (r + 1) * args.batch))
            g = EntropyGuidance(backend, guide, guidance) if hook else None
            sample(backend, labels, seeds, SamplerSettings(steps=args.steps, cfg=3.0), guidance=g, guided_steps=guided_steps if hook else ())  # fmt: skip

        return fn

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    plain = timed(run(False), device, args.repeats)
    guided = timed(run(True), device, args.repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    result = {
        "device": name, "tiny": args.tiny, "batch": args.batch, "steps": args.steps,
        "dtype": settings.dtype, "checkpointing": args.checkpointing, "guided_steps": guided_steps,
        "plain_img_s": args.batch / plain, "guided_img_s": args.batch / guided,
        "guided_over_plain": guided / plain, "peak_gib": peak,
    }  # fmt: skip
    print(f"| device | batch | dtype | ckpt | plain img/s | guided img/s | guided/plain | peak GiB |\n"
          f"|---|---|---|---|---|---|---|---|\n"
          f"| {name}{' (tiny)' if args.tiny else ''} | {args.batch} | {settings.dtype} | "
          f"{args.checkpointing} | {result['plain_img_s']:.2f} | {result['guided_img_s']:.2f} | "
          f"{result['guided_over_plain']:.2f}x | {peak:.1f} |")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
