"""Entropy guidance (paper §3, Eq. 6–7): steer sampling toward images the learner finds hard.

At a guided step the denoiser is re-run on x_t with gradients on, x̂0 is formed from its output
(Eq. 4), decoded, fed through the learner's own differentiable preprocessing, and the gradient of
a criterion (the learner's predictive entropy by default) with respect to x_t moves the sample
toward HIGHER entropy. Two normalisations:

* ``relative`` (default, the predecessor FGDS code's form, SPEC §3.2 g–h): per sample,
  Δx_t = ω · ‖x_t‖ · g/‖g‖, added to x_t before the scheduler step (whose model output is the
  pre-update one, as in FGDS).
* ``classifier``: the classifier-guidance form on the noise prediction,
  ε ← ε − √(1−ᾱ_t) · ω · ∇H (Dhariwal & Nichol), i.e. score + ω∇H as in Algorithm 1, line 13.

Criteria: ``entropy`` (default), ``cross_entropy`` to the target class (raising it makes the
image less typical of its label), ``margin`` (minus the gap between the two largest logits).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deliberate.errors import DeliberateError
from deliberate.generators.base import Backend
from deliberate.sampling import predict_x0

CRITERIA = ("entropy", "cross_entropy", "margin")
MODES = ("relative", "classifier")


@dataclass(frozen=True)
class GuidanceSettings:
    """How strongly, where and by what criterion the learner steers sampling."""

    omega: float = 0.0
    mode: str = "relative"
    criterion: str = "entropy"
    every: int = 3  # guide every `every`-th sampling step ...
    until: float = 0.8  # ... within the first `until` fraction of the trajectory
    through_denoiser: bool = True  # backprop through the UNet (else treat dx̂0/dx_t as identity)

    def validate(self) -> None:
        if not self.omega >= 0:
            raise DeliberateError(f"guidance omega={self.omega} must be >= 0 (0 is plain sampling)")
        if self.mode not in MODES:
            raise DeliberateError(f"guidance mode '{self.mode}' is not one of {', '.join(MODES)}")
        if self.criterion not in CRITERIA:
            raise DeliberateError(
                f"guidance criterion '{self.criterion}' is not one of {', '.join(CRITERIA)}"
            )
        if self.every < 1 or not 0 < self.until <= 1:
            raise DeliberateError(
                f"guidance every={self.every} must be >= 1 and until={self.until} in (0, 1]"
            )

    def guided_steps(self, steps: int) -> list[int]:
        """0-based loop indices that are guided: every `every`-th step of the first `until`."""
        if self.omega == 0:
            return []
        last = max(1, round(self.until * steps))
        return list(range(0, last, self.every))


# What configs/fmnist/dp.yaml guides with (a test keeps the two equal); `deliberate generate
# --learner` uses it when no --omega is given. Chosen by the ω sweep in BENCHMARKS.md.
DEFAULT_GUIDANCE = GuidanceSettings(omega=0.04)


def criterion_value(logits: torch.Tensor, labels: torch.Tensor, criterion: str) -> torch.Tensor:
    """Per-sample value that guidance INCREASES (B,)."""
    if criterion == "entropy":
        logp = F.log_softmax(logits.float(), dim=-1)
        return -(logp.exp() * logp).sum(-1)
    if criterion == "cross_entropy":
        return F.cross_entropy(logits.float(), labels, reduction="none")
    top2 = logits.float().topk(2, dim=-1).values
    return -(top2[:, 0] - top2[:, 1])


def learner_fingerprint(learner: torch.nn.Module) -> str:
    """A short hash of the learner's weights, stored with every image it guided."""
    h = hashlib.sha256()
    for name, tensor in sorted(learner.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


class EntropyGuidance:
    """The guidance hook for `deliberate.sampling.sample`; counts skipped (non-finite) gradients."""

    def __init__(self, backend: Backend, learner: torch.nn.Module, settings: GuidanceSettings):
        settings.validate()
        self.backend, self.learner, self.settings = backend, learner, settings
        self.skipped = 0
        self.skipped_per_row = None  # (B,) skips per image of the current batch; caller resets
        self.backward_passes = 0

    def gradient(self, x_t, t, cond, labels, scheduler) -> torch.Tensor:
        """∂criterion/∂x_t per sample (B, *latent); non-finite rows are zeroed and counted."""
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            if self.settings.through_denoiser:
                # Conditional prediction only, as in FGDS: CFG is not used for the gradient.
                x0 = predict_x0(scheduler, self.backend.model_output(x, t, cond), x, t)
            else:
                with torch.no_grad():
                    out = self.backend.model_output(x_t, t, cond)
                x0 = predict_x0(scheduler, out, x_t, t).detach() + (x - x.detach())
            value = criterion_value(
                self.learner(self.backend.decode(x0)), labels, self.settings.criterion
            )
            # Summing keeps per-sample gradients independent (samples do not interact).
            (grad,) = torch.autograd.grad(value.sum(), x)
        self.backward_passes += len(x_t)
        bad = ~torch.isfinite(grad).flatten(1).all(dim=1)
        rows = self.skipped_per_row
        self.skipped_per_row = bad.long() if rows is None or len(rows) != len(bad) else rows + bad
        if bad.any():
            self.skipped += int(bad.sum())
            grad = torch.where(bad.view(-1, *[1] * (grad.dim() - 1)), torch.zeros_like(grad), grad)
        return grad

    def __call__(self, x_t, t, step, cond, out, scheduler, labels):
        """Return (x_t, model_output) after one guidance update (paper Eq. 7, sign: ascent)."""
        grad = self.gradient(x_t, t, cond, labels, scheduler)
        w = self.settings.omega
        dims = list(range(1, x_t.dim()))
        if self.settings.mode == "relative":
            gnorm = grad.flatten(1).norm(dim=1).view(-1, *[1] * len(dims))
            xnorm = x_t.flatten(1).norm(dim=1).view(-1, *[1] * len(dims))
            step_ = torch.where(
                gnorm > 0, grad / (gnorm + 1e-12) * xnorm * w, torch.zeros_like(grad)
            )
            return x_t + step_, out
        return x_t, _shift_score(scheduler, out, x_t, t, w * grad)


def _shift_score(scheduler, out, x_t, t, shift):
    """Add `shift` to the model's implied score, ε ← ε − √(1−ᾱ_t)·shift, in its output type."""
    a = scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, *[1] * (x_t.dim() - 1))
    s = (1 - a).sqrt()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return out - s * shift
    x0 = predict_x0(scheduler, out, x_t, t)
    eps = (x_t - a.sqrt() * x0) / s.clamp_min(1e-8) - s * shift
    x0_new = (x_t - s * eps) / a.sqrt().clamp_min(1e-8)
    if kind == "v_prediction":
        return a.sqrt() * eps - s * x0_new
    return x0_new


def guided_sampler_kwargs(
    backend: Backend, learner: torch.nn.Module | None, settings: GuidanceSettings, steps: int
) -> tuple[EntropyGuidance | None, Sequence[int]]:
    """The (guidance hook, guided step indices) pair to pass to `sample`; (None, ()) when ω = 0."""
    if learner is None or settings.omega == 0:
        return None, ()
    return EntropyGuidance(backend, learner, settings), settings.guided_steps(steps)
