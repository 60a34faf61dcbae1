"""DDIM sampling with classifier-free guidance and an optional guidance hook: the math, once.

The sampler is a pure function of (backend, labels, seeds, settings): each image's initial noise
(and any DDIM eta noise) comes from its own torch.Generator seeded by its seed, so an image
depends only on its seed and label, not on the batch it was drawn in. Unguided sampling is
`guidance=None`, not a second loop.

CFG convention (paper Eq. 5): out = (1 + λ)·out(x, y) − λ·out(x, ∅), applied to the raw model
output (epsilon or v); λ = 0 is purely conditional sampling, and diffusers' `guidance_scale`
equals 1 + λ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from deliberate.config import field
from deliberate.errors import DeliberateError

if TYPE_CHECKING:  # the contract, for annotations only: no import cycle at run time
    from deliberate.generators.base import Backend

# name -> diffusers class, imported when a scheduler is made (diffusers takes seconds to import)
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}


@dataclass(frozen=True)
class SamplerSettings:
    """What, besides label, seed and guidance, determines an image."""

    steps: int = field(10, "sampling steps", ge=1)
    cfg: float = field(
        0.5, "CFG λ, paper Eq. 5: (1+λ)·cond − λ·uncond; 0.5 met the fidelity and usefulness bars "
        "(BENCHMARKS.md)", ge=0,
    )  # fmt: skip
    eta: float = field(0.0, "DDIM eta: 0 deterministic, 1 DDPM-like noise", ge=0, le=1)
    scheduler: str = field("ddim", "diffusers scheduler", choices=tuple(SCHEDULERS))

# A guidance hook: (x_t, t, step_index, cond, model_out, scheduler, labels) -> (x_t, model_out).
# It sees the CFG model output of the current step and may move x_t or change the output
# (entropy guidance ascends the learner's entropy; see deliberate.guidance). A hook that also
# has `guided_step(x_t, x_in, t, cond, null, cfg, scheduler, labels) -> (x_t, model_out)` makes
# the guided step's CFG output itself, from the same conditional forward its gradient needs:
# one denoiser forward less per guided step.
GuidanceFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SampleOutput:
    """Decoded images in [0, 1] (B, C, H, W) plus per-image extras recorded by guidance."""

    images: torch.Tensor
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def make_scheduler(backend: Backend, name: str = "ddim", steps: int = 10):
    """A fresh diffusers scheduler for this backend, with its timesteps set."""
    if name not in SCHEDULERS:
        raise DeliberateError(f"unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}")
    if steps < 1:
        raise DeliberateError(f"steps={steps} must be >= 1")
    config = dict(backend.scheduler_config)
    config["timestep_spacing"] = "trailing"
    import diffusers

    sched = getattr(diffusers, SCHEDULERS[name]).from_config(config)
    sched.set_timesteps(steps, device=backend.device)
    return sched


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...], device=None) -> torch.Tensor:
    """x_T for each seed, drawn from that seed's own generator: batch-size independent."""
    out = torch.empty((len(seeds), *shape))
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(int(s))
        out[i] = torch.randn(shape, generator=g)
    return out.to(device)


def cfg_output(backend: Backend, x_t: torch.Tensor, t: torch.Tensor, cond, null, cfg: float):
    """Model output under CFG in the paper's (1 + λ, −λ) convention; one batched forward pass."""
    if cfg == 0:
        return backend.model_output(x_t, t, cond)
    both = backend.model_output(
        torch.cat([x_t, x_t]), torch.cat([t, t]), backend.concat_cond(cond, null)
    )
    out_c, out_u = both.chunk(2)
    return combine_cfg(out_c, out_u, cfg)


def combine_cfg(out_c: torch.Tensor, out_u: torch.Tensor | None, cfg: float) -> torch.Tensor:
    """(1 + λ)·cond − λ·uncond, written as cond + λ·(cond − uncond); cond alone when λ = 0."""
    return out_c if cfg == 0 else out_c + cfg * (out_c - out_u)


def predict_x0(
    scheduler, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """x̂0 from the model output at x_t (paper Eq. 4, for epsilon, v or sample prediction)."""
    a = scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, *([1] * (x_t.dim() - 1)))
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x_t - (1 - a).sqrt() * model_out) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * x_t - (1 - a).sqrt() * model_out
    return model_out


@torch.no_grad()
def sample(
    backend: Backend,
    labels: torch.Tensor,
    seeds: Sequence[int],
    settings: SamplerSettings = SamplerSettings(),
    *,
    guidance: GuidanceFn | None = None,
    guided_steps: Sequence[int] = (),
) -> SampleOutput:
    """Sample one batch: DDIM (or another diffusers scheduler) with CFG and optional guidance.

    `guided_steps` are 0-based indices into the sampling loop at which `guidance` moves x_t
    before the scheduler step (FGDS/DP style: the step then uses the pre-update model output).
    """
    if len(seeds) != len(labels):
        raise DeliberateError(f"got {len(seeds)} seeds for {len(labels)} labels")
    cfg, eta = settings.cfg, settings.eta
    sched = make_scheduler(backend, settings.scheduler, settings.steps)
    device = backend.device
    labels = labels.to(device)
    x = initial_noise(seeds, backend.latent_shape, device) * sched.init_noise_sigma
    # No null conditioning without CFG: a generator may have none (generators/foreign.py).
    cond, null = backend.cond(labels), backend.null_cond(len(labels)) if cfg else None
    guided = set(guided_steps) if guidance is not None else set()
    gens = [torch.Generator().manual_seed(int(s) + 1) for s in seeds] if eta > 0 else None
    for i, t in enumerate(sched.timesteps):
        tb = t.expand(len(labels)).to(device)
        x_in = sched.scale_model_input(x, t)
        if i in guided and hasattr(guidance, "guided_step"):
            x, out = guidance.guided_step(x, x_in, tb, cond, null, cfg, sched, labels)
        else:
            out = cfg_output(backend, x_in, tb, cond, null, cfg)
            if i in guided:
                x, out = guidance(x, tb, i, cond, out, sched, labels)
        kwargs = {}
        if eta > 0 and type(sched).__name__ == "DDIMScheduler":
            noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens])
            kwargs = {"eta": eta, "variance_noise": noise.to(device)}
        x = sched.step(out, t, x, **kwargs).prev_sample
    return SampleOutput(images=backend.decode(x))
