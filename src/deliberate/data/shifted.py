"""A shifted Fashion-MNIST test suite: fixed corruptions of the 9,000 real test images.

The laptop analogue of the paper's ImageNet-Sketch / -R columns (Tables 1, 4, 5): accuracy under
a distribution shift the learner never trained for. Every transform is deterministic (the noise
has a fixed seed), so every run is scored on the very same shifted images.

The test images are dealt out to the shifts (image i goes to shift i mod 6), so each shift has
1,500 images and the whole suite costs one pass over the test set, not six: per-shift accuracy
is then known to about ±1.2 points (one binomial sd), the mean over shifts to about ±0.5.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from deliberate.learner import evaluate

NOISE_SEED = 1234  # the Gaussian-noise corruption draws its noise from this seed, always
NOISE_SD = 0.2  # in [0, 1] image units
ROTATE_DEG = 25.0
BLUR_SIGMA = 1.0
CONTRAST = 0.35  # adjust_contrast factor: blend towards the mean grey
SHIFT_PX = 4


def _noise(x: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(NOISE_SEED)
    return x + NOISE_SD * torch.randn(x.shape, generator=g)


def _tf():
    """torchvision's v2 functional transforms, imported when a shift is applied (seconds)."""
    from torchvision.transforms.v2 import functional

    return functional


SHIFTS = {
    "rotate": lambda x: _tf().rotate(x, ROTATE_DEG, interpolation=_tf().InterpolationMode.BILINEAR),
    "blur": lambda x: _tf().gaussian_blur(x, kernel_size=[5, 5], sigma=[BLUR_SIGMA, BLUR_SIGMA]),
    "noise": _noise,
    "invert": lambda x: 1.0 - x,
    "low-contrast": lambda x: _tf().adjust_contrast(x, CONTRAST),
    "translate": lambda x: _tf().affine(
        x, angle=0.0, translate=[SHIFT_PX, SHIFT_PX], scale=1.0, shear=[0.0, 0.0]
    ),
}
DESCRIPTIONS = {
    "rotate": f"rotated {ROTATE_DEG:g} degrees (bilinear)",
    "blur": f"Gaussian blur, sigma {BLUR_SIGMA:g} px",
    "noise": f"additive Gaussian noise, sd {NOISE_SD:g} (seed {NOISE_SEED})",
    "invert": "contrast inversion (1 - x)",
    "low-contrast": f"contrast scaled by {CONTRAST:g} towards the mean",
    "translate": f"shifted {SHIFT_PX} px right and down",
}


def shift_images(images: np.ndarray, name: str) -> np.ndarray:
    """Apply one named shift to uint8 images (N, H, W); returns uint8 (N, H, W)."""
    x = torch.as_tensor(np.asarray(images)).float().div(255.0).unsqueeze(1)  # (N, 1, H, W)
    y = SHIFTS[name](x).clamp(0, 1)
    return (y * 255).round().to(torch.uint8)[:, 0].numpy()


def shifted_suite(images: np.ndarray, labels: np.ndarray):
    """Yield (name, shifted uint8 images, labels): shift k gets images k, k + 6, k + 12, ..."""
    labels = np.asarray(labels)
    for k, name in enumerate(SHIFTS):
        idx = np.arange(k, len(images), len(SHIFTS))
        yield name, shift_images(images[idx], name), labels[idx]


def evaluate_shifted(
    learner, images: np.ndarray, labels: np.ndarray, progress: bool = False
) -> dict[str, float]:
    """Top-1 accuracy of `learner` on each shifted test set, plus their mean."""
    suite = tqdm(shifted_suite(images, labels), total=len(SHIFTS), desc="shifted test sets",
                 disable=not progress, leave=False)  # fmt: skip
    out = {name: evaluate(learner, x, y) for name, x, y in suite}
    out["mean"] = float(np.mean(list(out.values())))
    return out
