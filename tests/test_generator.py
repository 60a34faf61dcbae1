"""The pixel-space generator: tiny diffusers UNets built from configs, trained and sampled on CPU."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from deliberate.config import from_dict
from deliberate.data.fashion_mnist import CLASS_NAMES
from deliberate.errors import DeliberateError
from deliberate.generators.base import to_uint8
from deliberate.generators.pixel import DEFAULT_GENERATOR, load_pixel_backend
from deliberate.generators.train_pixel import GeneratorConfig, train_generator
from deliberate.sampling import SamplerSettings, initial_noise, predict_x0, sample
from tests.helpers import TINY_UNET, tiny_backend


def tiny_config(steps, **train):
    return from_dict(GeneratorConfig, {
        "model": TINY_UNET,
        "train": {"steps": steps, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 2,
                  "sample_every": 0, **train},
    })


def test_encode_decode_round_trip():
    backend = tiny_backend()
    images = torch.rand(3, 1, 28, 28)
    z = backend.encode(images)
    assert z.shape == (3, *backend.latent_shape) == (3, 16, 7, 7)
    assert torch.allclose(backend.decode(z), images, atol=1e-6)


def test_eta_noise_is_per_image_and_schedulers_run():
    backend = tiny_backend()
    labels = torch.tensor([1, 2, 3, 4])
    a = sample(backend, labels, [1, 2, 3, 4], SamplerSettings(steps=3, eta=1.0)).images
    b = torch.cat([sample(backend, labels[:1], [1], SamplerSettings(steps=3, eta=1.0)).images,
                   sample(backend, labels[1:], [2, 3, 4], SamplerSettings(steps=3, eta=1.0)).images])
    assert torch.equal(to_uint8(a), to_uint8(b))
    for name in ("dpm++", "euler"):
        out = sample(backend, labels, [1, 2, 3, 4], SamplerSettings(steps=3, scheduler=name)).images
        assert out.shape == (4, 1, 28, 28) and torch.isfinite(out).all()
    with pytest.raises(DeliberateError, match="unknown scheduler"):
        sample(backend, labels, [1, 2, 3, 4], SamplerSettings(steps=3, scheduler="nope"))


def test_predict_x0_inverts_the_forward_process():
    backend = tiny_backend()
    from deliberate.sampling import make_scheduler

    sched = make_scheduler(backend, "ddim", 10)
    x0 = torch.randn(2, *backend.latent_shape)
    noise = initial_noise([1, 2], backend.latent_shape)
    t = torch.tensor([100, 800])
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    assert torch.allclose(predict_x0(sched, v, x_t, t), x0, atol=1e-4)


def test_tiny_training_lowers_loss_and_resumes_exactly(tmp_path):
    full = train_generator(tiny_config(6), tmp_path / "a", progress=False)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [2, 4, 6]
    assert np.isfinite([row["loss"] for row in log]).all()
    # The same run interrupted after 4 steps and resumed equals the uninterrupted one.
    assert train_generator(tiny_config(6), tmp_path / "b", progress=False, stop_after=4) is None
    resumed = train_generator(tiny_config(6), tmp_path / "b", progress=False)
    wa = load_file(full / "unet" / "diffusion_pytorch_model.safetensors")
    wb = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # A different config aimed at the same folder is refused.
    with pytest.raises(DeliberateError, match="different config"):
        train_generator(tiny_config(6, lr=0.5), tmp_path / "b", progress=False)


def test_saved_generator_loads_and_matches(tmp_path):
    backend = tiny_backend(seed=3)
    backend.save(tmp_path / "gen")
    loaded = load_pixel_backend(tmp_path / "gen")
    assert loaded.identifier.startswith("pixel-") and loaded.class_names == CLASS_NAMES
    labels = torch.tensor([5, 6])
    assert torch.equal(sample(backend, labels, [1, 2], SamplerSettings(steps=2)).images,
                       sample(loaded, labels, [1, 2], SamplerSettings(steps=2)).images)


def test_corrupt_or_missing_generator_is_a_one_line_error(tmp_path):
    with pytest.raises(DeliberateError, match="not a deliberate generator folder"):
        load_pixel_backend(tmp_path)
    tiny_backend().save(tmp_path / "gen")
    (tmp_path / "gen" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    with pytest.raises(DeliberateError, match="corrupt") as e:
        load_pixel_backend(tmp_path / "gen")
    assert "\n" not in str(e.value)


def test_shipped_generator_loads_and_generates_each_class():
    backend = load_pixel_backend()
    assert backend.num_classes == 10 and backend.image_shape == (1, 28, 28)
    size = sum(f.stat().st_size for f in DEFAULT_GENERATOR.rglob("*") if f.is_file())
    assert size <= 20 * 2**20
    labels = torch.arange(10).repeat(20)
    images = sample(backend, labels, list(range(200)), SamplerSettings(steps=10, cfg=1.0)).images
    assert images.shape == (200, 1, 28, 28)
    assert 0.05 < images.mean() < 0.6  # not blank, not saturated
    # The intended class must be recognisable: nearest real class-mean image (a weak judge that
    # scores 68% on real test images) agrees with the label far above the 10% chance level.
    from deliberate.data.fashion_mnist import load_fashion_mnist

    real = load_fashion_mnist()
    flat = real.train_images.reshape(len(real.train_images), -1) / 255.0
    means = np.stack([flat[real.train_labels == c].mean(0) for c in range(10)])
    gen = images.flatten(1).numpy()
    pred = ((gen[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == labels.numpy()).mean() >= 0.6
