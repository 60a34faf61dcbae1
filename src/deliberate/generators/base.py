"""The generator backend contract: everything the sampler needs, nothing more.

A backend knows its classes, its latent shape and its diffusers scheduler; it predicts the
model output (epsilon, v or x0, as its scheduler's `prediction_type` says) for conditional and
unconditional inputs, and decodes latents to images in [0, 1] differentiably. The sampler
(`deliberate.sampling`) never knows which backend it drives.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Backend(Protocol):
    """What `deliberate.sampling.sample` requires of a generator."""

    class_names: tuple[str, ...]
    latent_shape: tuple[int, ...]  # (C, H, W) of x_t
    image_shape: tuple[int, ...]  # (C, H, W) of decode(x0)
    scheduler_config: dict[str, Any]  # a diffusers scheduler config (prediction_type, betas, ...)
    identifier: str  # a short id stored with every generated image

    @property
    def num_classes(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def cond(self, labels: torch.Tensor) -> Any:
        """Conditioning for class ids (B,); class embeddings or prompt embeddings."""

    def null_cond(self, n: int) -> Any:
        """The unconditional conditioning for a batch of n (the null class, or the empty prompt)."""

    def concat_cond(self, a: Any, b: Any) -> Any:
        """Concatenate two conditionings along the batch, for one CFG forward pass."""

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """The denoiser's raw prediction at x_t (B, *latent_shape), timestep t (B,)."""

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Latents (B, *latent_shape) -> images in [0, 1] (B, *image_shape), differentiable."""


def to_uint8(images01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (B, C, H, W) -> uint8 (B, H, W) for grey or (B, H, W, C) for colour."""
    x = (images01.clamp(0, 1) * 255).round().to(torch.uint8)
    return x[:, 0] if x.shape[1] == 1 else x.permute(0, 2, 3, 1)
