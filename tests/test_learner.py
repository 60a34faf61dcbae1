"""Learner and training recipe: schedule, entropy, guidance gradient, learning, resume."""

import io
import math

import numpy as np
import pytest
import torch

from deliberate.augment import random_resized_crop_flip
from deliberate.errors import DeliberateError
from deliberate.learner import (
    build_learner,
    evaluate,
    inference_copy,
    predict_entropy,
    predictive_entropy,
    to_float01,
)
from deliberate.training import (
    TrainConfig,
    Trainer,
    cpu_rng,
    train_classifier,
    uniform_sampler,
    wsd_lr,
)


def squares(n: int, num_classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable data: a bright 8x8 square in a class-specific quadrant, jittered, on noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(num_classes, size=n)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)  # (N, H, W) dim noise
    for i, y in enumerate(labels):
        top, left = 14 * (y // 2) + rng.integers(0, 6), 14 * (y % 2) + rng.integers(0, 6)
        images[i, top : top + 8, left : left + 8] = 255
    return images, labels


def tiny_trainer(seed: int = 0, **overrides) -> Trainer:
    """A small_resnet trainer on 28x28 grey images with a short schedule."""
    cfg = TrainConfig(iterations=8, batch_size=8, seed=seed, **overrides)
    with cpu_rng(seed):
        learner = build_learner("small_resnet", 4, 1, 28)
    return Trainer(learner, cfg)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_wsd_schedule_shape():
    total, peak = 100, 2.0
    lrs = [wsd_lr(s, total, peak, 0.1, 0.2) for s in range(total + 1)]
    assert lrs[:10] == pytest.approx([peak * (s + 1) / 10 for s in range(10)])  # linear warm-up
    assert lrs[10:81] == [peak] * 71  # stable
    assert lrs[90] == pytest.approx(peak / 2)  # cosine midpoint of the last 20 %
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:], strict=False))  # strictly decaying
    assert lrs[100] == 0.0 and lrs[99] > 0


def test_entropy_extremes():
    assert torch.allclose(predictive_entropy(torch.zeros(3, 10)), torch.tensor(math.log(10)))
    one_hot = torch.full((2, 10), -1e4)
    one_hot[:, 3] = 1e4
    h = predictive_entropy(one_hot)
    assert torch.isfinite(h).all() and (h.abs() < 1e-6).all()


@pytest.mark.parametrize(
    "arch, size, input_size", [("small_resnet", 20, None), ("resnet18", 28, 32)]
)
def test_entropy_gradient_through_preprocessing(arch, size, input_size):
    torch.manual_seed(0)
    learner = build_learner(arch, 10, 1, 28, input_size=input_size).eval()
    images = torch.rand(2, 1, size, size, requires_grad=True)  # resized, and grey -> RGB for resnet
    h = learner.entropy(images)
    assert h.shape == (2,) and torch.equal(h, learner.entropy(images))  # eval mode is deterministic
    (grad,) = torch.autograd.grad(h.sum(), images)
    assert grad.shape == images.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_small_resnet_learns_separable_squares():
    images, labels = squares(512)
    test_images, test_labels = squares(256, seed=1)
    cfg = TrainConfig(iterations=80, batch_size=16, lr=2e-3, eval_every=40, seed=0)
    learner, history = train_classifier(
        images, labels, cfg, {"test": (test_images, test_labels)}, progress=False
    )
    assert [row["step"] for row in history] == [40, 80]
    assert history[-1]["acc_test"] >= 0.95
    assert evaluate(learner, test_images, test_labels) == history[-1]["acc_test"]
    h = predict_entropy(learner, test_images)
    assert h.shape == (256,) and (h >= 0).all() and (h <= math.log(4) + 1e-5).all()


def test_same_seed_gives_identical_weights():
    images, labels = squares(64)
    a, b = (tiny_trainer(seed=3, augment=True, mixup_alpha=0.5) for _ in range(2))
    for trainer in (a, b):
        trainer.train_steps(uniform_sampler(images, labels), 4)
    assert_same_state(a.model.state_dict(), b.model.state_dict())
    c = tiny_trainer(seed=4, augment=True, mixup_alpha=0.5)
    c.train_steps(uniform_sampler(images, labels), 4)
    assert not torch.equal(c.model.backbone.head.weight, a.model.backbone.head.weight)


def test_resume_is_bit_exact():
    images, labels = squares(64)
    overrides = dict(augment=True, mixup_alpha=0.5, cutmix_alpha=1.0)
    straight = tiny_trainer(**overrides)
    straight.train_steps(uniform_sampler(images, labels), 8)

    first = tiny_trainer(**overrides)
    first.train_steps(uniform_sampler(images, labels), 4)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = tiny_trainer(seed=99, **overrides)  # different init and RNG: the state overrides both
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    losses = resumed.train_steps(uniform_sampler(images, labels), 4)

    assert all(math.isfinite(loss) for loss in losses)  # the Mixup / CutMix path runs
    assert resumed.step_count == straight.step_count == 8 and resumed.lr == straight.lr == 0.0
    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    assert_same_state(straight.ema.state_dict(), resumed.ema.state_dict())


def test_random_resized_crop_boxes_and_flips():
    x = torch.arange(2 * 3 * 12 * 12, dtype=torch.float32).view(2, 3, 12, 12)
    with cpu_rng(0):  # the whole image at scale 1, ratio 1: the image or its mirror, exactly
        same = random_resized_crop_flip(x.repeat(8, 1, 1, 1), scale=(1, 1), ratio=(1, 1))
    for got, want in zip(same, x.repeat(8, 1, 1, 1), strict=True):
        assert torch.equal(got, want) or torch.equal(got, want.flip(-1))
    assert any(torch.equal(g, w.flip(-1)) for g, w in zip(same, x.repeat(8, 1, 1, 1), strict=True))
    with cpu_rng(1):  # a quarter of the area: zoomed in, so pixels repeat along rows
        zoomed = random_resized_crop_flip(x, scale=(0.25, 0.25), ratio=(1, 1))
    assert zoomed.shape == x.shape and not torch.equal(zoomed, x)
    assert zoomed.min() >= x.min() and zoomed.max() <= x.max()  # bilinear: inside the range


def test_resized_crop_and_bf16_train_and_keep_fp32_weights():
    images, labels = squares(64)
    trainer = tiny_trainer(augment=True, crop="resized", precision="bf16")
    losses = trainer.train_steps(uniform_sampler(images, labels), 4)
    assert all(math.isfinite(loss) for loss in losses)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.ema.parameters())
    fp32 = tiny_trainer(augment=True, crop="resized")
    fp32.train_steps(uniform_sampler(images, labels), 4)  # same draws, other precision
    diff = (fp32.model.backbone.head.weight - trainer.model.backbone.head.weight).abs().max()
    assert 0 < diff < 0.05  # bf16 rounds the forward, not the update


def test_unknown_arch_and_bad_config_raise():
    with pytest.raises(DeliberateError, match="small_resnet, resnet18") as info:
        build_learner("vgg11", 10, 1, 28)
    assert "\n" not in str(info.value)
    with pytest.raises(DeliberateError, match="TrainConfig.cooldown_frac"):
        TrainConfig(warmup_frac=0.5, cooldown_frac=0.6)


def test_to_float01_layouts():
    hwc = np.full((2, 5, 6, 3), 255, np.uint8)
    assert to_float01(hwc).shape == (2, 3, 5, 6) and to_float01(hwc).max() == 1.0
    assert to_float01(np.zeros((2, 5, 6), np.uint8)).shape == (2, 1, 5, 6)
    assert to_float01(torch.rand(2, 3, 5, 6)).shape == (2, 3, 5, 6)


def _with_running_stats(learner, seed: int = 0):
    """An eval-mode learner whose BatchNorm layers hold non-trivial running statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in learner.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return learner.eval()


def _entropy_and_grad(learner, x):
    x = x.detach().requires_grad_(True)
    h = learner.entropy(x)
    (g,) = torch.autograd.grad(h.sum(), x)
    return h.detach(), g


class _Branchy(torch.nn.Module):
    """A backbone torch.fx cannot trace: Python control flow on a tensor's value."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.sum() > 0:  # data-dependent: fx raises a TraceError here
            y = y * 2
        return self.head(y.mean((2, 3)))


@pytest.mark.parametrize("arch,channels", [("small_resnet", 1), ("resnet18", 3)])
def test_inference_copy_is_the_same_function_folded(arch, channels):
    torch.manual_seed(0)
    size = None if arch == "small_resnet" else 32
    learner = _with_running_stats(build_learner(arch, 10, channels, 28, input_size=size))
    copy_ = inference_copy(learner)
    x = torch.rand(6, channels, 28, 28)
    h, g = _entropy_and_grad(learner, x)
    hc, gc = _entropy_and_grad(copy_, x)
    torch.testing.assert_close(hc, h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gc, g, rtol=1e-3, atol=1e-6 * g.abs().max().item())
    # Folded: no BatchNorm is left; conv weights channels_last; nothing of it is trainable.
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy_.modules())
    convs = [m for m in copy_.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs
                         if c.weight.shape[-1] > 1)  # fmt: skip
    assert not any(p.requires_grad for p in copy_.parameters())
    # The learner itself is untouched, its preprocessing buffers too.
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in learner.modules())
    assert learner.mean.is_contiguous() and copy_.mean is not learner.mean
    assert all(p.requires_grad for p in learner.parameters())


def test_inference_copy_keeps_what_it_cannot_fold():
    from deliberate.learner import Learner

    torch.manual_seed(0)
    net = Learner(_Branchy(), num_classes=3, in_channels=1, input_size=8, backbone_channels=1,
                  mean=(0.5,), std=(0.5,))  # fmt: skip
    # Untraceable (torch.fx raises on the data-dependent branch): the learner itself.
    assert inference_copy(_with_running_stats(net)) is net
    # Training mode (BatchNorm uses the batch's statistics) and no BatchNorm: the learner itself.
    learner = build_learner("small_resnet", 10, 1, 28).train()
    assert inference_copy(learner) is learner
    plain = Learner(torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Flatten(),
                                        torch.nn.LazyLinear(3)),
                    num_classes=3, in_channels=1, input_size=8, backbone_channels=1,
                    mean=(0.5,), std=(0.5,)).eval()  # fmt: skip
    assert inference_copy(plain) is plain
