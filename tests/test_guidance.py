"""Entropy guidance: sign, normalisation, NaN safety, guided-step choice (off-equals-plain and
entropy ascent over whole sampling runs, for every backend: test_backend_contract.py). The
learner that guides is a fixed linear one, or a fixed classifier loaded as `generate --guide`
loads it (deliberate.guide): the hook must not care which."""

import math

import pytest
import torch

from deliberate.config import check_fields
from deliberate.errors import DeliberateError
from deliberate.guidance import (
    EntropyGuidance,
    GuidanceSettings,
    criterion_value,
    learner_fingerprint,
    resolve_precision,
)
from deliberate.guide import load_guide
from deliberate.learner import build_learner
from deliberate.sampling import SamplerSettings, cfg_output, make_scheduler, sample
from tests.helpers import LinearLearner, tiny_backend, write_guide


@pytest.fixture(scope="module", params=["linear", "fixed guide"])
def models(request, tmp_path_factory):
    backend = tiny_backend()
    if request.param == "fixed guide":
        spec = write_guide(tmp_path_factory.mktemp("guide"), backend.image_shape, 10)
        return backend, load_guide(spec, backend)
    learner = LinearLearner((1, 28, 28), 10, std=0.2).eval()
    learner.requires_grad_(False)
    return backend, learner


def _criterion_at(backend, learner, x, t, labels, sched, criterion="entropy"):
    from deliberate.sampling import predict_x0

    x0 = predict_x0(sched, backend.model_output(x, t, backend.cond(labels)), x, t)
    return criterion_value(learner(backend.decode(x0)), labels, criterion)


@pytest.mark.parametrize("criterion", ["entropy", "cross_entropy", "margin"])
@pytest.mark.parametrize("mode", ["relative", "classifier"])
def test_one_guidance_step_raises_the_criterion(models, criterion, mode):
    backend, learner = models
    sched = make_scheduler(backend, "ddim", 10)
    labels = torch.arange(8) % 10
    torch.manual_seed(1)
    x = torch.randn(8, *backend.latent_shape)
    t = sched.timesteps[5].expand(8)
    omega = 0.002 if mode == "relative" else 0.005  # small: a first-order check of the sign
    # The classifier form shifts x̂0 along the x_t-gradient; that is an ascent direction for the
    # criterion at x̂0 only when dx̂0/dx_t is a positive multiple of the identity, as it is with
    # through_denoiser=False (a random tiny UNet's Jacobian is arbitrary).
    settings = GuidanceSettings(omega=omega, mode=mode, criterion=criterion,
                                through_denoiser=mode == "relative")
    hook = EntropyGuidance(backend, learner, settings)
    with torch.no_grad():
        out = cfg_output(backend, x, t, backend.cond(labels), backend.null_cond(8), 1.0)
        before = _criterion_at(backend, learner, x, t, labels, sched, criterion)
        x_new, out_new = hook(x, t, 5, backend.cond(labels), out, sched, labels)
        if mode == "relative":
            after = _criterion_at(backend, learner, x_new, t, labels, sched, criterion)
            assert torch.equal(out_new, out)  # FGDS: the stale model output is kept
        else:
            assert torch.equal(x_new, x)
            from deliberate.sampling import predict_x0

            x0_old, x0_new = predict_x0(sched, out, x, t), predict_x0(sched, out_new, x, t)
            after = criterion_value(learner(backend.decode(x0_new)), labels, criterion)
            before = criterion_value(learner(backend.decode(x0_old)), labels, criterion)
    assert (after > before).float().mean() >= 0.75, (before, after)
    assert after.mean() > before.mean()


def test_relative_step_has_norm_omega_times_x_norm(models):
    backend, learner = models
    sched = make_scheduler(backend, "ddim", 10)
    labels = torch.arange(4)
    x = torch.randn(4, *backend.latent_shape) * torch.tensor([0.5, 1, 2, 4]).view(4, 1, 1, 1)
    t = sched.timesteps[2].expand(4)
    hook = EntropyGuidance(backend, learner, GuidanceSettings(omega=0.05))
    x_new, _ = hook(x, t, 2, backend.cond(labels), torch.zeros_like(x), sched, labels)
    step = (x_new - x).flatten(1).norm(dim=1)
    assert torch.allclose(step, 0.05 * x.flatten(1).norm(dim=1), rtol=1e-4)
    assert hook.backward_passes == 4


def test_nan_gradients_are_skipped_and_counted(models):
    backend, _ = models

    class NaNForFirst(torch.nn.Module):
        def forward(self, images):
            logits = images.flatten(1)[:, :10] * 3
            return torch.cat([logits[:1] * float("nan"), logits[1:]])

    hook = EntropyGuidance(backend, NaNForFirst(), GuidanceSettings(omega=0.05, every=1))
    labels = torch.arange(3)
    out = sample(backend, labels, [1, 2, 3], SamplerSettings(steps=3), guidance=hook, guided_steps=[0, 1, 2])
    assert torch.isfinite(out.images).all()
    assert hook.skipped == 3  # the first image at each of the three guided steps


def test_guided_steps_and_validation():
    s = GuidanceSettings(omega=0.05, every=3, until=0.8)
    assert s.guided_steps(10) == [0, 3, 6]
    assert GuidanceSettings(omega=0.05, every=5, until=1.0).guided_steps(30) == [0, 5, 10, 15, 20, 25]
    assert GuidanceSettings(omega=0.0).guided_steps(10) == []
    for bad in (dict(omega=-1.0), dict(omega=math.nan), dict(mode="x"), dict(criterion="x"),
                dict(every=0), dict(until=0.0), dict(precision="fp16")):
        with pytest.raises(DeliberateError):
            check_fields(GuidanceSettings(**bad))  # from_dict runs the same checks on load


def test_learner_fingerprint_changes_with_weights(models):
    _, learner = models
    a = learner_fingerprint(learner)
    other = build_learner("small_resnet", 10, 1, 28)
    assert a == learner_fingerprint(learner) and a != learner_fingerprint(other)
    assert learner_fingerprint(build_learner("small_resnet", 10, 1, 28)) != learner_fingerprint(other)


class _TwoPass:
    """The hook without `guided_step`: the sampler runs the CFG pass, the hook its own forward."""

    def __init__(self, hook):
        self.hook = hook

    def __call__(self, *args):
        return self.hook(*args)


@pytest.mark.parametrize("cfg,mode", [(0.5, "relative"), (0.0, "relative"), (0.5, "classifier")])
def test_the_shared_forward_guides_as_the_two_pass_form(models, cfg, mode):
    """guided_step reuses the conditional forward for CFG: the same images, one forward less."""
    backend, learner = models
    settings = GuidanceSettings(omega=0.05, mode=mode, every=1)
    sampler = SamplerSettings(steps=4, cfg=cfg)
    labels, seeds = torch.arange(6) % 10, list(range(6))
    steps = settings.guided_steps(sampler.steps)
    calls = []
    forward = backend.model_output

    def counted(x, t, cond):
        calls.append(len(x))
        return forward(x, t, cond)

    outs, forwards = [], []
    for hook in (EntropyGuidance(backend, learner, settings),
                 _TwoPass(EntropyGuidance(backend, learner, settings))):  # fmt: skip
        calls.clear()
        backend.model_output = counted
        try:
            outs.append(sample(backend, labels, seeds, sampler, guidance=hook, guided_steps=steps))
        finally:
            del backend.model_output
        forwards.append(sum(calls))  # images through the denoiser
    torch.testing.assert_close(outs[0].images, outs[1].images, rtol=0, atol=1e-5)
    per_step = 6 * (2 if cfg else 1)
    assert forwards == [per_step * sampler.steps, per_step * sampler.steps + 6 * len(steps)]


def test_bf16_guidance_keeps_the_gradients_direction_and_is_deterministic():
    """precision bf16: the learner's part in bf16 changes the gradient's bits, not its direction
    (what the relative step uses), and two runs give the same images."""
    backend = tiny_backend()
    learner = build_learner("small_resnet", 10, 1, 28).eval().requires_grad_(False)
    sched = make_scheduler(backend, "ddim", 10)
    labels = torch.arange(8) % 10
    x = torch.randn(8, *backend.latent_shape, generator=torch.Generator().manual_seed(3))
    t, cond = sched.timesteps[3].expand(8), backend.cond(labels)
    grads = {p: EntropyGuidance(backend, learner, GuidanceSettings(precision=p))
             .gradient(x, t, cond, labels, sched) for p in ("fp32", "bf16")}  # fmt: skip
    assert not torch.equal(grads["fp32"], grads["bf16"])  # the setting is applied
    cos = torch.nn.functional.cosine_similarity(grads["fp32"].flatten(1), grads["bf16"].flatten(1))
    assert cos.min() > 0.95, cos
    settings, sampler = GuidanceSettings(precision="bf16", every=1), SamplerSettings(steps=4)
    images = [sample(backend, labels, list(range(8)), sampler,
                     guidance=EntropyGuidance(backend, learner, settings),
                     guided_steps=settings.guided_steps(4)).images for _ in range(2)]  # fmt: skip
    assert torch.equal(images[0], images[1])


def test_auto_precision_resolves_per_device_and_only_to_a_fast_one():
    assert [resolve_precision(p, "cpu") for p in ("fp32", "bf16")] == ["fp32", "bf16"]
    assert resolve_precision("auto", "meta") == "fp32"  # nothing known to be fast: fp32
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    hook = EntropyGuidance(tiny_backend(), LinearLearner((1, 28, 28), 10),
                           GuidanceSettings(precision="auto"))  # fmt: skip
    assert hook.precision == resolve_precision("auto", "cpu")
