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
import dataclasses
import statistics
import string
import sys
import time
from pathlib import Path

import torch

from deliberate.guidance import EntropyGuidance, GuidanceSettings
from deliberate.learner import build_learner, inference_copy
from deliberate.sampling import SamplerSettings, make_scheduler, predict_x0, sample


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
    bf16 = dataclasses.replace(guidance, precision="bf16")
    modes = {  # each way's guidance hook, made afresh per batch
        "plain": lambda: None,
        "guided": lambda: EntropyGuidance(backend, fast, guidance),
        "guided, two-pass": lambda: TwoPass(EntropyGuidance(backend, fast, guidance)),
        "guided, bf16": lambda: EntropyGuidance(backend, fast, bf16),
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
    pairs = (("plain", "guided"), ("plain", "guided, two-pass"), ("plain", "guided, bf16"),
             ("plain, before", "guided, before"))
    for a, b in pairs:
        med[f"{a} / {b}"] = statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))
    return med, steps


def breakdown(backend, learner, batch, repeats):
    """Milliseconds of the parts of one guided step against one plain step, at timestep 500:
    where a guided step's extra cost goes. A markdown table."""
    fast = inference_copy(learner)
    sched = make_scheduler(backend, "ddim", 10)
    x = torch.randn(batch, *backend.latent_shape, generator=torch.Generator().manual_seed(0))
    t, c = torch.full((batch,), 500), torch.arange(batch) % backend.num_classes
    cond, null = backend.cond(c), backend.null_cond(batch)

    def plain():
        with torch.no_grad():
            backend.model_output(torch.cat([x, x]), torch.cat([t, t]), backend.concat_cond(cond, null))

    def uncond():
        with torch.no_grad():
            backend.model_output(x, t, null)

    def denoiser():  # the conditional forward with gradients, and its backward to x_t
        xx = x.detach().requires_grad_(True)
        torch.autograd.grad(predict_x0(sched, backend.model_output(xx, t, cond), xx, t).sum(), xx)

    def hook(precision):
        return EntropyGuidance(backend, fast, GuidanceSettings(precision=precision))

    def learner_part(precision):  # the hook's own learner part, on x as x̂0
        xx = x.detach().requires_grad_(True)
        hook(precision)._gradient_of(xx, xx, c)

    def step(precision):
        hook(precision).guided_step(x, x, t, cond, null, 0.5, sched, c)

    parts = {"plain step (one CFG forward, 2B)": plain,
             "guided step, fp32 learner": lambda: step("fp32"),
             "guided step, bf16 learner": lambda: step("bf16"),
             "  conditional forward + backward to x_t": denoiser,
             "  unconditional forward (B)": uncond,
             "  learner forward + backward, fp32": lambda: learner_part("fp32"),
             "  learner forward + backward, bf16": lambda: learner_part("bf16")}  # fmt: skip
    times = {k: [] for k in parts}
    for r in range(repeats + 1):  # the first round warms up; interleaved like compare()
        for name, fn in parts.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[name].append(1000 * (time.perf_counter() - t0))
    lines = [f"\nOne step of the pixel row, batch {batch} (median ms of {repeats}):",
             "| part | ms |", "|---|---|"]  # fmt: skip
    lines += [f"| {k} | {statistics.median(v):.0f} |" for k, v in times.items()]
    return "\n".join(lines)


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
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the parts of one guided step of the pixel row (ms)")
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
          "bf16 learner img/s | guided/plain | two-pass/plain | bf16/plain | "
          "before: plain, guided img/s | before: guided/plain |"
          "\n|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for name, b, lrn, sampler, guidance, batch in rows:
        med, steps = compare(b, lrn, sampler, guidance, batch, args.repeats)
        rates = " | ".join(f"{med[m]:.1f}" for m in ("plain", "guided", "guided, two-pass",
                                                     "guided, bf16"))  # fmt: skip
        ratios = " | ".join(f"{med['plain / ' + m]:.2f}x" for m in ("guided", "guided, two-pass",
                                                                     "guided, bf16"))  # fmt: skip
        bp, bg = med["plain, before"], med["guided, before"]
        bgp = med["plain, before / guided, before"]
        print(f"| {name} | {steps} of {sampler.steps} | {rates} | {ratios} | {bp:.1f}, {bg:.1f} | "
              f"{bgp:.2f}x |", flush=True)  # fmt: skip
    if args.breakdown:
        print(breakdown(backend, learner, 250, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
