"""Plain vs entropy-guided sampling cost, side by side in one run; prints a table.

Ways to sample the same seeds, interleaved batch by batch so that they share the machine's
load, in an order that rotates each repeat so that no way always runs first (each ratio is the
median over repeats of the ratio within one repeat): plain (CFG only); guided as the loop
samples (`rounds.guided_batch`: the learner's `learner.inference_copy`, with BatchNorm folded and channels_last weights, and
`EntropyGuidance.guided_step`, whose conditional forward with gradients also gives the CFG
output); guided in the two-pass form the shared forward replaced (the CFG pass, then a second conditional
forward for the gradient); and plain and guided as the code sampled before `inference_copy`
(the learner as it is). Rows: the shipped pixel generator with
fmnist/dp.yaml's sampler and guidance (10 DDIM steps, λ = 0.5, ω = 0.04 at steps 0, 3, 6;
`--every 3 5` adds other guided-step sets) and a tiny Stable Diffusion
(benchmarks/latent_speed.py's), both guided by the small CNN learner.

    python benchmarks/sampling_speed.py [--repeats 5] [--threads 1] [--no-sd] [--every 3 5]
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
from deliberate.learner import build_learner, inference_copy
from deliberate.sampling import SamplerSettings, sample


class TwoPass:
    """The guidance hook without `guided_step`: the sampler's CFG pass, then the hook's own."""

    def __init__(self, hook):
        self.hook = hook

    def __call__(self, *args):
        return self.hook(*args)


def compare(backend, learner, sampler, guidance, batch, repeats):
    """Median img/s of each way of sampling, interleaved per batch so that they share the load.

    plain / guided / two-pass: as the loop samples today (`rounds.guided_batch`: the learner's
    `inference_copy`). before: the same seeds guided by the learner as it is, as the code sampled
    before `inference_copy`; "plain, before" is plain's code again, a control for the noise."""
    labels = torch.arange(batch) % backend.num_classes
    steps = guidance.guided_steps(sampler.steps)
    fast = inference_copy(learner)
    modes = {  # each way's guidance hook, made afresh per batch
        "plain": lambda: None,
        "guided": lambda: EntropyGuidance(backend, fast, guidance),
        "guided, two-pass": lambda: TwoPass(EntropyGuidance(backend, fast, guidance)),
        "plain, before": lambda: None,
        "guided, before": lambda: EntropyGuidance(backend, learner, guidance),
    }
    rates = {m: [] for m in modes}
    order = list(modes)
    for r in range(repeats + 1):  # the first round warms up
        seeds = list(range(r * batch, (r + 1) * batch))
        for mode in order[r % len(order):] + order[: r % len(order)]:  # no mode always first
            hook = modes[mode]()
            t0 = time.perf_counter()
            sample(backend, labels, seeds, sampler, guidance=hook, guided_steps=steps if hook else ())
            if r:
                rates[mode].append(batch / (time.perf_counter() - t0))
    med = {m: statistics.median(v) for m, v in rates.items()}
    # Ratios from the same repeat's pair (the same seeds, seconds apart), then their median.
    pairs = (("plain", "guided"), ("plain", "guided, two-pass"), ("plain, before", "guided, before"))
    for a, b in pairs:
        med[f"{a} / {b}"] = statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))
    return med, steps


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
    ap.add_argument("--every", type=int, nargs="+", default=[3],
                    help="guidance.every values to measure (3: fmnist/dp.yaml's, steps 0, 3, 6)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from deliberate.generators.pixel import load_pixel_backend

    backend = load_pixel_backend()
    learner = build_learner("small_resnet", 10, 1, 28).eval().requires_grad_(False)
    rows = [(f"pixel (shipped), batch 250, every {e}", backend, learner,
             SamplerSettings(steps=10, cfg=0.5), GuidanceSettings(every=e), 250)
            for e in args.every]  # fmt: skip
    if not args.no_sd:
        sd, cnn = tiny_sd()
        rows.append(("tiny SD, 16 px, batch 8", sd, cnn,
                     SamplerSettings(steps=10, cfg=3.0), GuidanceSettings(), 8))  # fmt: skip
    print(f"torch threads: {torch.get_num_threads()}; medians of {args.repeats} interleaved batches")
    print("| generator | guided steps | plain img/s | guided img/s | two-pass img/s | "
          "guided/plain | two-pass/plain | before: plain, guided img/s | before: guided/plain |"
          "\n|---|---|---|---|---|---|---|---|---|")
    for name, b, lrn, sampler, guidance, batch in rows:
        med, steps = compare(b, lrn, sampler, guidance, batch, args.repeats)
        p, g, t = med["plain"], med["guided"], med["guided, two-pass"]
        bp, bg = med["plain, before"], med["guided, before"]
        gp, tp = med["plain / guided"], med["plain / guided, two-pass"]
        bgp = med["plain, before / guided, before"]
        print(f"| {name} | {steps} of {sampler.steps} | {p:.1f} | {g:.1f} | {t:.1f} | "
              f"{gp:.2f}x | {tp:.2f}x | {bp:.1f}, {bg:.1f} | {bgp:.2f}x |",
              flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
