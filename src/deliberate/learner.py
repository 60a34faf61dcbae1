"""The learner: a classifier plus the differentiable preprocessing shared by training and guidance.

Training, evaluation and entropy guidance all feed images in [0, 1] through the same
`Learner.forward`, so the guidance gradient sees exactly the function that is being trained.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deliberate.errors import DeliberateError

TORCHVISION_ARCHS = ("resnet18", "resnet50", "vit_b_16")
ARCHS = ("small_resnet", *TORCHVISION_ARCHS)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def predictive_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) over the last axis, H = -sum p log p (paper Eq. 6)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    # exp(logp) underflows to exactly 0 for confident classes, so 0 * finite stays 0 (no NaN).
    return -(logp.exp() * logp).sum(dim=-1)


class Learner(nn.Module):
    """A backbone behind a differentiable resize / grey-to-RGB / normalise step."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        in_channels: int,
        input_size: int,
        backbone_channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ):
        super().__init__()
        if backbone_channels not in (in_channels, 3) or len(mean) != backbone_channels:
            raise DeliberateError(
                f"Learner: cannot feed {in_channels}-channel images to a"
                f" {backbone_channels}-channel backbone with {len(mean)}-channel mean/std"
            )
        self.backbone = backbone
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_size = input_size
        self.backbone_channels = backbone_channels
        # Non-persistent: they are a property of the architecture, not learned state.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def preprocess(self, images01: torch.Tensor) -> torch.Tensor:
        """Map float images in [0, 1], (B, C, H, W), to backbone input, differentiably."""
        x = images01.to(self.mean.dtype)  # (B, C, H, W)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", antialias=False
            )  # (B, C, S, S)
        if x.shape[1] == 1 and self.backbone_channels == 3:
            x = x.expand(-1, 3, -1, -1)  # (B, 3, S, S), a view; gradients sum over the copies
        return (x - self.mean) / self.std

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for float images in [0, 1], (B, C, H, W)."""
        return self.backbone(self.preprocess(images01))

    def entropy(self, images01: torch.Tensor) -> torch.Tensor:
        """Per-sample predictive entropy (B,) in nats; differentiable w.r.t. the images."""
        return predictive_entropy(self(images01))


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual shortcut (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small residual CNN for 28x28 images: a stem, then one stride-2 stage per extra width.

    BatchNorm uses running statistics in eval mode, so guidance (eval mode) is deterministic.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...] = (32, 64, 128),
        depth: int = 1,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        blocks, cin = [], widths[0]
        for width in widths[1:]:
            for i in range(depth):
                blocks.append(_BasicBlock(cin, width, 2 if i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # (B, C', H / 2^k, W / 2^k)
        return self.head(x.mean(dim=(2, 3)))  # global average pool -> (B, num_classes)


def build_backbone(arch: str, num_classes: int, in_channels: int, size: int) -> nn.Module:
    """A randomly initialised classifier on (B, in_channels, size, size) inputs: `small_resnet`
    or any torchvision classification model by name (3 channels; never downloaded)."""
    if arch == "small_resnet":
        return SmallResNet(in_channels, num_classes)
    import torchvision  # deferred: only the large backbones need it

    kwargs = {"image_size": size} if arch.startswith("vit_") else {}
    # weights=None: never download; a learner trains from scratch, a guide loads its own weights.
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)


def torchvision_classifiers() -> list[str]:
    """The names of torchvision's classification models (what `build_backbone` also takes)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def build_learner(
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    input_size: int | None = None,
) -> Learner:
    """Build a randomly initialised learner; `input_size` overrides the backbone resolution."""
    if arch not in ARCHS:
        raise DeliberateError(f"unknown learner arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    if num_classes < 2 or in_channels not in (1, 3) or image_size < 8:
        raise DeliberateError(
            f"build_learner: need num_classes >= 2, in_channels in (1, 3), image_size >= 8;"
            f" got {num_classes}, {in_channels}, {image_size}"
        )
    if arch == "small_resnet":
        # Maps [0, 1] to [-1, 1]; the stem's BatchNorm absorbs any remaining dataset shift.
        return Learner(
            build_backbone(arch, num_classes, in_channels, input_size or image_size),
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size or image_size,
            backbone_channels=in_channels,
            mean=(0.5,) * in_channels,
            std=(0.5,) * in_channels,
        )
    size = input_size or 224
    return Learner(
        build_backbone(arch, num_classes, 3, size),
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=size,
        backbone_channels=3,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def inference_copy(learner: nn.Module) -> nn.Module:
    """`learner` for inference (evaluation, scoring, guidance): the same function, faster on CPU.

    A learner with BatchNorm in eval mode comes back as a frozen copy with the BatchNorm folded
    into the convolution before it (torch.fx's `fuse`) and its weights channels_last, mkldnn's
    fast layout. The small CNN's forward and backward then take about 0.55x the time, and its
    evaluation about 0.5x (BENCHMARKS.md, "Guided vs plain sampling"). Only float rounding
    changes: logits agree to about 1e-7. Anything else comes back as it is, with no copy: a
    learner in training mode (its BatchNorm uses the batch's statistics), one without
    BatchNorm (a ViT), and one torch.fx cannot trace (Python control flow on tensor values).
    """
    net = getattr(learner, "backbone", None)
    if learner.training or not isinstance(net, nn.Module) or not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()
    ):
        return learner
    from torch.fx.experimental.optimization import fuse

    try:
        folded = fuse(net)
    except Exception:  # noqa: BLE001 - torch.fx raises many types for what it cannot trace
        return learner
    out = copy.deepcopy(learner, memo={id(net): folded})  # copies all but the backbone
    return out.requires_grad_(False).to(memory_format=torch.channels_last)


def to_float01(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Stored uint8 (N, H, W) / (N, H, W, C), or float (N, C, H, W) in [0, 1] -> (N, C, H, W)."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = np.array(images)  # read-only memmaps and frombuffer arrays: torch wants writable
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        # uint8 is the storage layout (channels last); floats are already in model layout.
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return x.float().div_(255.0)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or not x.is_floating_point():
        raise DeliberateError(
            f"images must be uint8 (N,H,W[,C]) or float (N,C,H,W); got {x.dtype} {tuple(x.shape)}"
        )
    return x


@torch.no_grad()
def _batched_logits(learner: Learner, images, batch_size: int):
    """Yield (start, logits) over `images` in eval mode, restoring the previous mode afterwards."""
    was_training = learner.training
    learner.eval()
    device = next(learner.parameters()).device
    if hasattr(images, "iter_batches"):  # streamed from disk (data.imagefolder.StreamedImages)
        batches = images.iter_batches(batch_size)
    else:
        starts = range(0, len(images), batch_size)
        batches = ((s, to_float01(images[s : s + batch_size])) for s in starts)
    net = inference_copy(learner)  # BatchNorm folded, channels_last: about 2x faster on CPU
    try:
        for start, batch in batches:
            yield start, net(batch.to(device))
    finally:
        learner.train(was_training)


def evaluate(learner: Learner, images, labels, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `learner` on (images, labels), in eval mode without gradients."""
    labels = torch.as_tensor(np.asarray(labels)).long()
    correct = 0
    for start, logits in _batched_logits(learner, images, batch_size):
        pred = logits.argmax(dim=-1).cpu()
        correct += int((pred == labels[start : start + len(pred)]).sum())
    return correct / max(len(labels), 1)


def accuracy(learner: Learner, images, labels) -> float:
    """Top-1 accuracy; under torchrun each rank scores a block and the exact counts are summed.

    Every rank thus gets the same number, so patience decisions agree without a broadcast.
    """
    from deliberate import distributed

    part = distributed.block(len(labels))
    n = part.stop - part.start
    correct = round(evaluate(learner, images[part], labels[part]) * n)
    return distributed.all_sum(correct) / max(len(labels), 1)


def predict(learner: Learner, images, batch_size: int = 1000) -> np.ndarray:
    """Predicted class (N,) of every image, in eval mode without gradients."""
    out = [logits.argmax(-1).cpu().numpy() for _, logits in _batched_logits(learner, images, batch_size)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def predict_entropy(learner: Learner, images, batch_size: int = 1000) -> np.ndarray:
    """Per-image predictive entropy (N,) in nats, in eval mode without gradients."""
    out = [
        predictive_entropy(logits).cpu()
        for _, logits in _batched_logits(learner, images, batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)
