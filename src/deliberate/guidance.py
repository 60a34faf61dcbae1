"""Entropy guidance (paper §3, Eq. 6–7): steer sampling toward images the learner finds hard.

At a guided step the conditional denoiser pass runs with gradients on, x̂0 is formed from its
output (Eq. 4), decoded, fed through the learner's own differentiable preprocessing, and the
gradient of a criterion (the learner's predictive entropy by default) with respect to x_t moves
the sample toward HIGHER entropy. That same conditional pass also serves the step's CFG output
(`EntropyGuidance.guided_step`), with the unconditional half run without gradients, so a guided
step costs a plain one plus the backward pass (no second conditional forward). Two
normalisations:

* ``relative`` (default, the predecessor FGDS code's form, SPEC §3.2 g–h): per sample,
  Δx_t = ω · ‖x_t‖ · g/‖g‖, added to x_t before the scheduler step (whose model output is the
  pre-update one, as in FGDS).
* ``classifier``: the classifier-guidance form on the noise prediction,
  ε ← ε − √(1−ᾱ_t) · ω · ∇H (Dhariwal & Nichol), i.e. score + ω∇H as in Algorithm 1, line 13.

``precision: bf16`` runs the learner's part of the gradient under bf16 autocast: half of what a
guided step costs beyond a plain one (BENCHMARKS.md, "Guided vs plain sampling"), for a
gradient whose direction, the only thing the relative form uses, agrees with fp32's to a
cosine of about 0.99. ``auto`` (the Fashion-MNIST DP preset's) takes bf16 only on hardware
with bf16 arithmetic; the resolved choice is in the run's summary (`guidance_precision`).

Criteria: ``entropy`` (default), ``cross_entropy`` to the target class (raising it makes the
image less typical of its label), ``margin`` (minus the gap between the two largest logits).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from deliberate.config import check_fields, field
from deliberate.sampling import cfg_output, combine_cfg, predict_x0

if TYPE_CHECKING:  # the contract, for annotations only: no import cycle at run time
    from deliberate.generators.base import Backend

CRITERIA = ("entropy", "cross_entropy", "margin")
MODES = ("relative", "classifier")
PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class GuidanceSettings:
    """How strongly, where and by what criterion the learner steers sampling."""

    omega: float = field(
        0.04, "ω: relative step |Δx_t| = ω·|x_t| (relative) or the score scale (classifier); "
        "0 = plain sampling. 0.04: the ω sweep in BENCHMARKS.md", ge=0,
    )  # fmt: skip
    mode: str = field("relative", "relative (FGDS) or classifier (Dhariwal & Nichol)",
                      choices=MODES)  # fmt: skip
    criterion: str = field("entropy", "what guidance raises", choices=CRITERIA)
    every: int = field(3, "guide every `every`-th sampling step ...", ge=1)
    until: float = field(0.8, "... of the first `until` fraction of the trajectory", gt=0, le=1)
    through_denoiser: bool = field(
        True, "backprop through the denoiser (else treat dx̂0/dx_t as the identity)"
    )
    precision: str = field(
        "fp32", "the learner's forward/backward inside guidance: fp32; bf16 autocast (the "
        "denoiser and the criterion stay fp32); auto: bf16 where the device has bf16 arithmetic "
        "(avx512_bf16 / AMX CPUs, bf16 GPUs), else fp32",
        choices=PRECISIONS,
    )  # fmt: skip

    def guided_steps(self, steps: int) -> list[int]:
        """0-based loop indices that are guided: every `every`-th step of the first `until`."""
        if self.omega == 0:
            return []
        last = max(1, round(self.until * steps))
        return list(range(0, last, self.every))


def resolve_precision(precision: str, device) -> str:
    """`precision` with `auto` resolved for `device`: bf16 only where it is fast.

    Without bf16 instructions, bf16 autocast on a CPU is emulated and far slower than fp32
    (2.3x with AVX-512 alone, 19x with AVX2, measured for the small CNN: BENCHMARKS.md).
    """
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes
    fast = kind == "cpu" and any(getattr(torch.cpu, p, lambda: False)() for p in probes)
    return "bf16" if fast else "fp32"


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
    """The guidance hook for `deliberate.sampling.sample`, for one batch.

    After sampling it holds its own record: `skipped_rows` (B,), the non-finite gradients zeroed
    per image; `skipped`, their total; `backward_passes`; `seconds` spent in the hook.
    """

    def __init__(self, backend: Backend, learner: torch.nn.Module, settings: GuidanceSettings):
        check_fields(settings)
        self.backend, self.learner, self.settings = backend, learner, settings
        self.precision = resolve_precision(settings.precision, backend.device)  # fp32 or bf16
        self.skipped, self.skipped_rows = 0, None
        self.backward_passes, self.seconds = 0, 0.0

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
            return self._gradient_of(x, x0, labels)

    def _gradient_of(self, x, x0, labels) -> torch.Tensor:
        """∂criterion(learner(decode(x0)))/∂x, non-finite rows zeroed and counted."""
        image = self.backend.decode(x0)
        bf16 = self.precision == "bf16"  # only the learner: its logits come back bf16
        with torch.autocast(image.device.type, torch.bfloat16, enabled=bf16):
            logits = self.learner(image)
        value = criterion_value(logits, labels, self.settings.criterion)  # in fp32
        # Summing keeps per-sample gradients independent (samples do not interact).
        (grad,) = torch.autograd.grad(value.sum(), x)
        self.backward_passes += len(x)
        bad = ~torch.isfinite(grad).flatten(1).all(dim=1)
        self.skipped_rows = bad.long() if self.skipped_rows is None else self.skipped_rows + bad
        if bad.any():
            self.skipped += int(bad.sum())
            grad = torch.where(bad.view(-1, *[1] * (grad.dim() - 1)), torch.zeros_like(grad), grad)
        return grad

    def guided_step(self, x_t, x_in, t, cond, null, cfg, scheduler, labels):
        """One guided step from a single conditional forward: (x_t, CFG model output).

        The conditional output, computed with gradients for the guidance, is also the CFG's
        conditional half; only the unconditional half is a second (gradient-free) forward. The
        plain path batches both halves in one forward instead; per image the numbers agree to
        float rounding (tests/test_guidance.py pins the images against the two-pass form).
        """
        if not self.settings.through_denoiser:  # no gradient through the denoiser: nothing shared
            out = cfg_output(self.backend, x_in, t, cond, null, cfg)
            return self(x_t, t, None, cond, out, scheduler, labels)
        t0 = time.perf_counter()
        try:
            with torch.enable_grad():
                x = x_t.detach().requires_grad_(True)
                # x_in is x_t scaled for the model (the identity for DDIM), as in the plain step.
                x_model = x if x_in is x_t else scheduler.scale_model_input(x, t[0])
                out_c = self.backend.model_output(x_model, t, cond)
                x0 = predict_x0(scheduler, out_c, x, t)  # conditional only, as in FGDS
                grad = self._gradient_of(x, x0, labels)
            uncond = None
            if cfg:
                with torch.no_grad():
                    uncond = self.backend.model_output(x_in, t, null)
            out = combine_cfg(out_c.detach(), uncond, cfg)
            return self._move(x_t, t, out, scheduler, grad)
        finally:
            self.seconds += time.perf_counter() - t0

    def __call__(self, x_t, t, step, cond, out, scheduler, labels):
        """Return (x_t, model_output) after one guidance update (paper Eq. 7, sign: ascent)."""
        t0 = time.perf_counter()
        try:
            return self._update(x_t, t, cond, out, scheduler, labels)
        finally:
            self.seconds += time.perf_counter() - t0

    def _update(self, x_t, t, cond, out, scheduler, labels):
        return self._move(x_t, t, out, scheduler, self.gradient(x_t, t, cond, labels, scheduler))

    def _move(self, x_t, t, out, scheduler, grad):
        """Apply the guidance step for `grad`: move x_t (relative) or shift the score."""
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
