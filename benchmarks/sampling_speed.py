"""Plain and entropy-guided sampling speed of the shipped generator; prints a table.

Usage: python benchmarks/sampling_speed.py   (run on an otherwise idle machine; medians of 5 batches)
"""

import statistics
import time

import torch

from deliberate.generators.pixel import load_pixel_backend
from deliberate.guidance import EntropyGuidance, GuidanceSettings
from deliberate.learner import build_learner
from deliberate.sampling import SamplerSettings, sample


def rate(backend, steps, cfg, batch, learner=None, omega=0.0, repeats=5):
    """Median images/s over `repeats` timed batches after one warm-up batch."""
    labels = torch.arange(batch) % backend.num_classes
    rates = []
    for r in range(repeats + 1):
        settings = GuidanceSettings(omega=omega)
        hook = EntropyGuidance(backend, learner, settings) if learner is not None and omega else None
        guided = settings.guided_steps(steps) if hook else []
        t0 = time.perf_counter()
        sample(backend, labels, list(range(r * batch, (r + 1) * batch)), SamplerSettings(steps=steps, cfg=cfg), guidance=hook, guided_steps=guided)
        if r:
            rates.append(batch / (time.perf_counter() - t0))
    return statistics.median(rates), rates


def main():
    backend = load_pixel_backend()
    learner = build_learner("small_resnet", 10, 1, 28).eval().requires_grad_(False)
    print(f"torch threads: {torch.get_num_threads()}")
    print("| DDIM steps | CFG λ | batch | guidance | median img/s | runs |\n|---|---|---|---|---|---|")
    rows = [(10, 0.5, 250, 0.0), (10, 0.5, 500, 0.0), (5, 0.5, 500, 0.0), (10, 0.5, 250, 0.02)]
    results = {}
    for steps, cfg, batch, omega in rows:
        med, runs = rate(backend, steps, cfg, batch, learner, omega)
        results[(steps, batch, omega)] = med
        what = f"ω = {omega} at steps {GuidanceSettings(omega=omega).guided_steps(steps)}" if omega else "plain"
        print(f"| {steps} | {cfg} | {batch} | {what} | {med:.1f} | {' '.join(f'{x:.0f}' for x in runs)} |",
              flush=True)
    print(f"\nguided / plain cost per image (10 steps, batch 250): "
          f"{results[(10, 250, 0.0)] / results[(10, 250, 0.02)]:.2f}x")


if __name__ == "__main__":
    main()
