"""The embedded generator: a class-conditional pixel-space diffusers UNet2DModel for small images.

Images in [-1, 1] are pixel-unshuffled (28x28x1 -> 7x7x16 at factor 4) so that a lean UNet works
on a handful of positions with many channels: this is what makes CPU sampling fast (see
docs/generator.md for the measured trade-offs). Class k is embedded as k; the extra index
`num_classes` is the null class used for classifier-free guidance.

On disk a generator is a diffusers-format folder: `unet/` (config.json + safetensors),
`scheduler/scheduler_config.json` and `deliberate.json` (class names, image shape, unshuffle).
A folder that diffusers saved without `deliberate.json` loads through `generators/foreign.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel

from deliberate.config import field
from deliberate.errors import DeliberateError
from deliberate.generators.foreign import is_diffusers_folder, read_diffusers_folder

DEFAULT_GENERATOR = Path(__file__).resolve().parent.parent / "assets" / "fmnist-generator"
META_FILE = "deliberate.json"


@dataclass
class PixelModelConfig:
    """Architecture of the pixel-space UNet and its noise schedule."""

    image_size: int = field(28, "side of the square images, 16 to 64 px", ge=16, le=64)
    image_channels: int = field(1, "image channels (1 grey, 3 RGB)", choices=(1, 3))
    unshuffle: int = field(
        4, "pixel-unshuffle factor: the UNet sees (C*f*f, H/f, W/f); 0 = auto (about 8x8)", ge=0
    )
    block_out_channels: list[int] = field(
        [64], "UNet channels per resolution level; [] = auto (one level, scaled with C*f*f)"
    )
    layers_per_block: int = field(2, "resnet layers per UNet block", ge=1)
    norm_num_groups: int = field(8, "GroupNorm groups", ge=1)
    attention: bool = field(True, "self-attention in the UNet's mid block")
    prediction_type: str = field(
        "v_prediction", "what the UNet predicts", choices=("epsilon", "v_prediction", "sample")
    )
    beta_schedule: str = field(
        "squaredcos_cap_v2",
        "noise schedule",
        choices=("squaredcos_cap_v2", "linear", "scaled_linear"),
    )
    num_train_timesteps: int = field(1000, "diffusion timesteps", gt=1)

    def resolved(self) -> PixelModelConfig:
        """This config with `unshuffle: 0` and `block_out_channels: []` made concrete.

        Auto picks the largest factor that divides the size and leaves the UNet at least 7x7
        positions (28 -> 4, 32 -> 4, 16 -> 2, 64 -> 8), and 64 channels per 32 unshuffled input
        channels (28 px grey: 64; 32 px RGB: 128), the measured sweet spot of docs/generator.md.
        """
        f = self.unshuffle or max(
            d for d in range(1, self.image_size + 1)
            if self.image_size % d == 0 and self.image_size // d >= 7
        )  # fmt: skip
        widths = list(self.block_out_channels) or [64 * -(-self.image_channels * f * f // 32)]
        return dataclasses.replace(self, unshuffle=f, block_out_channels=widths)

    def validate(self) -> None:
        cfg = self.resolved()
        if cfg.image_size % cfg.unshuffle:
            raise DeliberateError(
                f"model.unshuffle={cfg.unshuffle} must divide model.image_size={cfg.image_size}"
            )
        for c in cfg.block_out_channels:
            if c % cfg.norm_num_groups:
                raise DeliberateError(
                    f"model.block_out_channels {c} is not divisible by norm_num_groups={cfg.norm_num_groups}"
                )


def build_unet(cfg: PixelModelConfig, num_classes: int) -> UNet2DModel:
    """A diffusers UNet2DModel working on unshuffled pixels, with num_classes + 1 class embeddings."""
    cfg = cfg.resolved()
    levels = len(cfg.block_out_channels)
    return UNet2DModel(
        sample_size=cfg.image_size // cfg.unshuffle,
        in_channels=cfg.image_channels * cfg.unshuffle**2,
        out_channels=cfg.image_channels * cfg.unshuffle**2,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        norm_num_groups=cfg.norm_num_groups,
        add_attention=cfg.attention,
        num_class_embeds=num_classes + 1,
    )


def build_scheduler_config(cfg: PixelModelConfig) -> dict[str, Any]:
    """The DDIM scheduler config: trailing timesteps so that few-step sampling starts at pure noise."""
    return dict(
        DDIMScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            beta_schedule=cfg.beta_schedule,
            prediction_type=cfg.prediction_type,
            clip_sample=False,
            set_alpha_to_one=True,
            timestep_spacing="trailing",
        ).config
    )


class PixelBackend(torch.nn.Module):
    """A pixel-space class-conditional generator implementing the backend contract."""

    def __init__(self, unet: UNet2DModel, scheduler_config: dict, meta: dict):
        super().__init__()
        self.unet = unet
        self.scheduler_config = dict(scheduler_config)
        self.meta = dict(meta)
        self.class_names = tuple(meta["class_names"])
        self.unshuffle = int(meta["unshuffle"])
        c, s = int(meta["image_channels"]), int(meta["image_size"])
        self.image_shape = (c, s, s)
        self.latent_shape = (c * self.unshuffle**2, s // self.unshuffle, s // self.unshuffle)
        self.identifier = meta.get("identifier", "untrained")
        # Our own generators always have one; a diffusers folder's may not (generators/foreign.py).
        self.null_class = meta.get("null_class", self.num_classes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def cond(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.to(self.device, torch.long)

    def null_cond(self, n: int) -> torch.Tensor:
        if self.null_class is None:
            raise DeliberateError(
                f"generator {self.identifier} has no null class, so it cannot do classifier-free "
                "guidance; sample with cfg 0 (--cfg 0)"
            )
        return torch.full((n,), self.null_class, dtype=torch.long, device=self.device)

    def concat_cond(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b])

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, class_labels=cond).sample

    def encode(self, images01: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, C, H, W) -> unshuffled latents in [-1, 1] (B, C*f*f, H/f, W/f)."""
        return F.pixel_unshuffle(images01 * 2 - 1, self.unshuffle)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Unshuffled latents -> images in [0, 1]; clamped, differentiable inside the range."""
        return ((F.pixel_shuffle(x0, self.unshuffle) + 1) / 2).clamp(0, 1)

    @classmethod
    def from_config(cls, cfg: PixelModelConfig, class_names: tuple[str, ...]) -> PixelBackend:
        """A randomly initialised backend (for training, or tiny models in tests)."""
        cfg = cfg.resolved()
        meta = {
            "class_names": list(class_names),
            "image_size": cfg.image_size,
            "image_channels": cfg.image_channels,
            "unshuffle": cfg.unshuffle,
        }
        return cls(build_unet(cfg, len(class_names)), build_scheduler_config(cfg), meta)

    def save(self, path: str | Path, extra_meta: dict | None = None) -> None:
        """Write the diffusers-format folder (safetensors weights); the id hashes the weights."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        DDIMScheduler.from_config(self.scheduler_config).save_pretrained(tmp / "scheduler")
        weights = (tmp / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
        meta = {**self.meta, **(extra_meta or {})}
        meta["identifier"] = "pixel-" + hashlib.sha256(weights).hexdigest()[:12]
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)


def load_pixel_backend(
    path: str | Path | None = None, device: str = "cpu", classes=None
) -> PixelBackend:
    """Load a generator folder (default: the shipped Fashion-MNIST model) in eval mode.

    A folder without `deliberate.json` that diffusers saved (a class-conditional UNet2DModel and
    its scheduler) loads by the rules of `generators/foreign.py`; `classes` (a ClassList or
    None) names its classes and tells whether it has a null class.
    """
    path = Path(path) if path is not None else DEFAULT_GENERATOR
    meta_file = path / META_FILE
    t0 = time.perf_counter()
    if not meta_file.is_file() and is_diffusers_folder(path):
        return _ready(PixelBackend(*read_diffusers_folder(path, classes)), device, t0)
    if not meta_file.is_file() or not (path / "unet" / "config.json").is_file():
        raise DeliberateError(
            f"{path} is not a deliberate generator folder (needs {META_FILE}, unet/, scheduler/) "
            "nor a diffusers one (unet/ with a class-conditional UNet2DModel, scheduler/); "
            "train one with `deliberate train-generator` or pass --generator DIR"
        )
    try:
        meta = json.loads(meta_file.read_text())
        unet = UNet2DModel.from_pretrained(
            path / "unet", use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False
        )
        sched = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DeliberateError(
            f"generator at {path} is corrupt ({first}); re-train or re-install it"
        ) from None
    return _ready(PixelBackend(unet, sched, meta), device, t0)


def _ready(backend: PixelBackend, device: str, t0: float) -> PixelBackend:
    """A loaded backend on `device`, in eval mode, frozen, with its load time."""
    backend = backend.to(device).eval()
    backend.requires_grad_(False)
    backend.load_seconds = time.perf_counter() - t0
    return backend
