"""Plain vs entropy-guided sampling cost, side by side in one run; prints a table.

Three ways to sample the same seeds, interleaved batch by batch so that they share the
machine's load: plain (CFG only), guided as the loop samples (`EntropyGuidance.guided_step`: the
guided step's conditional forward, run with gradients, also gives its CFG output), and guided in
the two-pass form it replaced (the CFG pass, then a second conditional forward for the gradient).
Rows: the shipped pixel generator with fmnist/dp.yaml's sampler and guidance (10 DDIM steps,
λ = 0.5, ω = 0.04 at steps 0, 3, 6) and a tiny Stable Diffusion (benchmarks/latent_speed.py's),
both guided by the small CNN learner.

    python benchmarks/sampling_speed.py [--repeats 5] [--threads 1] [--no-sd]
"""

from __future__ import annotations

import argparse
import statistics
import string
import sys
import time
from pathlib import Path

import torch

from deliberate.guidance import EntropyGuidance, GuidanceSettings
from deliberate.learner import build_learner
from deliberate.sampling import SamplerSettings, sample


class TwoPass:
    """The guidance hook without `guided_step`: the sampler's CFG pass, then the hook's own."""

    def __init__(self, hook):
        self.hook = hook

    def __call__(self, *args):
        return self.hook(*args)


def compare(backend, learner, sampler, guidance, batch, repeats):
    """Median img/s of plain, guided and two-pass guided sampling, interleaved per batch."""
    labels = torch.arange(batch) % backend.num_classes
    steps = guidance.guided_steps(sampler.steps)
    modes = {
        "plain": lambda: None,
        "guided": lambda: EntropyGuidance(backend, learner, guidance),
        "guided, two-pass": lambda: TwoPass(EntropyGuidance(backend, learner, guidance)),
    }
    rates = {m: [] for m in modes}
    for r in range(repeats + 1):  # the first round warms up
        seeds = list(range(r * batch, (r + 1) * batch))
        for mode, make in modes.items():
            hook = make()
            t0 = time.perf_counter()
            sample(backend, labels, seeds, sampler, guidance=hook, guided_steps=steps if hook else ())
            if r:
                rates[mode].append(batch / (time.perf_counter() - t0))
    return {m: statistics.median(v) for m, v in rates.items()}, steps


def tiny_sd():
    """A tiny Stable Diffusion backend (16 px) and the small CNN learner (random weights)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from deliberate.generators.latent import LatentSettings, StableDiffusionBackend
    from latent_speed import sd15, tokenizer

    torch.manual_seed(0)
    unet, vae, text, sched = sd15(tiny=True)
    names = [f"class {c}" for c in string.ascii_lowercase[:10]]
    settings = LatentSettings(dtype="float32", image_size=16)
    backend = StableDiffusionBackend(unet, vae, text, tokenizer(), sched, names, settings)
    backend._prepare("cpu")
    learner = build_learner("small_resnet", 10, 3, 16).eval().requires_grad_(False)
    return backend, learner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-sd", action="store_true", help="skip the tiny Stable Diffusion row")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from deliberate.generators.pixel import load_pixel_backend

    backend = load_pixel_backend()
    learner = build_learner("small_resnet", 10, 1, 28).eval().requires_grad_(False)
    rows = [("pixel (shipped), batch 250", backend, learner, SamplerSettings(steps=10, cfg=0.5),
             GuidanceSettings(), 250)]  # fmt: skip
    if not args.no_sd:
        sd, cnn = tiny_sd()
        rows.append(("tiny SD, 16 px, batch 8", sd, cnn,
                     SamplerSettings(steps=10, cfg=3.0), GuidanceSettings(), 8))  # fmt: skip
    print(f"torch threads: {torch.get_num_threads()}; medians of {args.repeats} interleaved batches")
    print("| generator | guided steps | plain img/s | guided img/s | two-pass img/s | "
          "guided/plain | two-pass/plain |\n|---|---|---|---|---|---|---|")
    for name, b, lrn, sampler, guidance, batch in rows:
        med, steps = compare(b, lrn, sampler, guidance, batch, args.repeats)
        p, g, t = med["plain"], med["guided"], med["guided, two-pass"]
        print(f"| {name} | {steps} of {sampler.steps} | {p:.1f} | {g:.1f} | {t:.1f} | "
              f"{p / g:.2f}x | {p / t:.2f}x |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
