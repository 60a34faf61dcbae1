"""The backend contract: every generator backend, loaded as a user's folder would be, passes the
same checks. Shapes and dtypes, sampling deterministic per seed whatever the batch split,
a differentiable decoder, guidance off (ω = 0) equal to plain sampling bit for bit, guidance on
raising the learner's entropy for the same seeds.

The pixel backend (a tiny random one) always runs, and so does a class-conditional UNet2DModel
that diffusers saved itself (`diffusers`: kind pixel without deliberate.json, its null class last);
the tiny Stable Diffusion and DiT (conftest's sd_dir and dit_dir) run when transformers is
importable. Guidance is by a fixed linear learner and by a fixed classifier loaded as
`generate --guide` loads one."""

from itertools import pairwise

import pytest
import torch

from deliberate.generators import load_backend
from deliberate.generators.base import to_uint8
from deliberate.guidance import EntropyGuidance, GuidanceSettings
from deliberate.sampling import SamplerSettings, sample
from tests.helpers import (
    CLASSES,
    LinearLearner,
    latent_settings,
    needs_transformers,
    tiny_generator_dir,
    write_diffusers_pixel,
    write_guide,
)

PREFIX = {"pixel": "pixel-", "diffusers": "pixel-", "stable_diffusion": "sd-", "dit": "dit-"}


@pytest.fixture(scope="module")
def pixel_dir(tmp_path_factory):
    return tiny_generator_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory):
    """DDPMPipeline.save_pretrained of a UNet2DModel with 4 class embeddings: CLASSES + null."""
    folder = tmp_path_factory.mktemp("diffusers") / "ddpm"
    return write_diffusers_pixel(folder, len(CLASSES.ids) + 1)


def load(kind, path):
    settings = latent_settings("pixel" if kind == "diffusers" else kind, path)
    return load_backend(settings, classes=None if kind == "pixel" else CLASSES)


@pytest.fixture(
    scope="module",
    params=[
        "pixel",
        "diffusers",
        pytest.param("stable_diffusion", marks=needs_transformers),
        pytest.param("dit", marks=needs_transformers),
    ],
)
def loaded(request):
    """(kind, folder, backend) for every kind; only the kind's own folder is built."""
    kind = request.param
    path = request.getfixturevalue({"pixel": "pixel_dir", "diffusers": "diffusers_dir",
                                    "stable_diffusion": "sd_dir", "dit": "dit_dir"}[kind])  # fmt: skip
    return kind, path, load(kind, path)


@pytest.fixture(scope="module")
def backend(loaded):
    return loaded[2]


@pytest.fixture(scope="module", params=["linear", "fixed guide"])
def learner_for(request, tmp_path_factory):
    """The learner that guides: a fixed linear one, or a classifier loaded as `--guide` loads it."""

    def make(backend):
        if request.param == "linear":
            learner = LinearLearner(backend.image_shape, backend.num_classes)
            return learner.eval().requires_grad_(False)
        from deliberate.guide import load_guide

        folder = tmp_path_factory.mktemp("guide")
        return load_guide(write_guide(folder, backend.image_shape, backend.num_classes), backend)

    return make


def test_shapes_dtypes_classes_and_identifier(loaded):
    kind, path, backend = loaded
    assert backend.num_classes == len(backend.class_names) >= 3
    assert backend.scheduler_config["prediction_type"] in ("epsilon", "v_prediction")
    labels = torch.tensor([0, 1, 2, 1])
    cond, null = backend.cond(labels), backend.null_cond(4)
    assert len(backend.concat_cond(cond, null)) == 8 and not torch.equal(cond[0], null[0])
    x = torch.randn(4, *backend.latent_shape)
    out = backend.model_output(x, torch.full((4,), 500), cond)  # DiT: learned sigma dropped
    assert out.shape == x.shape and out.dtype == torch.float32
    assert backend.decode(x).shape == (4, *backend.image_shape)
    images = sample(backend, labels, [1, 2, 3, 4], SamplerSettings(steps=2)).images
    assert images.shape == (4, *backend.image_shape) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert backend.identifier.startswith(PREFIX[kind])
    assert load(kind, path).identifier == backend.identifier


def test_sampling_is_deterministic_per_seed_whatever_the_batch(backend):
    labels = torch.tensor([0, 3, 7, 9, 1, 2]) % backend.num_classes
    seeds, settings = [11, 12, 13, 14, 15, 16], SamplerSettings(steps=3, cfg=2.0)
    full = sample(backend, labels, seeds, settings).images
    assert full.shape == (6, *backend.image_shape) and full.min() >= 0 and full.max() <= 1
    assert torch.equal(full, sample(backend, labels, seeds, settings).images)
    for cuts in ([0, 2, 4, 6], [0, 1, 6], [0, 3, 6]):  # pairs, one and five, halves
        parts = torch.cat([sample(backend, labels[a:b], seeds[a:b], settings).images
                           for a, b in pairwise(cuts)])  # fmt: skip
        assert torch.equal(to_uint8(full), to_uint8(parts)), cuts
    other = sample(backend, labels, [s + 100 for s in seeds], settings).images
    assert not torch.equal(full, other)
    no_cfg = SamplerSettings(steps=3, cfg=0.0)
    assert not torch.equal(full, sample(backend, labels, seeds, no_cfg).images)


def test_decode_is_differentiable(backend):
    x0 = torch.randn(2, *backend.latent_shape, requires_grad=True)
    images = backend.decode(x0)
    assert images.shape == (2, *backend.image_shape)
    (grad,) = torch.autograd.grad(images.sum(), x0)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_guidance_off_equals_plain_sampling_bit_for_bit(backend, learner_for):
    learner = learner_for(backend)
    labels, seeds = torch.arange(6) % backend.num_classes, list(range(6))
    plain = sample(backend, labels, seeds, SamplerSettings(steps=4)).images
    assert GuidanceSettings(omega=0.0).guided_steps(4) == []
    zero = EntropyGuidance(backend, learner, GuidanceSettings(omega=0.0))
    off = sample(backend, labels, seeds, SamplerSettings(steps=4), guidance=zero,
                 guided_steps=[0, 1, 2, 3]).images  # fmt: skip
    assert torch.equal(plain, off)
    assert zero.skipped == 0 and zero.skipped_rows.tolist() == [0] * 6
    settings = GuidanceSettings(omega=0.05, every=1)
    hook, steps = EntropyGuidance(backend, learner, settings), settings.guided_steps(4)
    guided = sample(backend, labels, seeds, SamplerSettings(steps=4), guidance=hook,
                    guided_steps=steps).images  # fmt: skip
    assert not torch.equal(plain, guided)
    assert hook.backward_passes == 6 * len(steps) and hook.skipped == 0 and hook.seconds > 0


def test_guidance_raises_learner_entropy_for_the_same_seeds(backend, learner_for):
    """One entropy-ascent step at the last sampling step, dx̂0/dx_t taken as the identity (a
    random denoiser's Jacobian is arbitrary): the final images' entropy rises for the same seeds."""
    learner = learner_for(backend)
    labels, seeds = torch.arange(8) % 3, list(range(100, 108))
    plain = sample(backend, labels, seeds, SamplerSettings(steps=3, cfg=1.0)).images
    hook = EntropyGuidance(backend, learner,
                           GuidanceSettings(omega=0.02, through_denoiser=False))  # fmt: skip
    guided = sample(backend, labels, seeds, SamplerSettings(steps=3, cfg=1.0), guidance=hook,
                    guided_steps=[2])  # fmt: skip
    with torch.no_grad():
        before, after = learner.entropy(plain), learner.entropy(guided.images)
    assert (after > before).float().mean() >= 0.75, (before, after)
    assert after.mean() > before.mean()
    # Through the denoiser (the default), guidance runs and changes the images.
    hook = EntropyGuidance(backend, learner, GuidanceSettings(omega=0.05))
    out = sample(backend, labels, seeds, SamplerSettings(steps=3, cfg=1.0), guidance=hook,
                 guided_steps=[0, 1])  # fmt: skip
    assert torch.isfinite(out.images).all() and not torch.equal(out.images, plain)
    assert hook.backward_passes == 16
