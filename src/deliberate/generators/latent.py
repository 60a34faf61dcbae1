"""Latent-diffusion backends on diffusers components: Stable Diffusion (class-name prompts) and DiT.

Both implement the backend contract of `generators/base.py`, so `deliberate.sampling.sample` and
entropy guidance drive them exactly as they drive the pixel backend:

* ``stable_diffusion``: UNet2DConditionModel + AutoencoderKL + CLIP text encoder and tokenizer
  (transformers), read from a folder in diffusers layout (an SD-1.5 snapshot: model_index.json,
  unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a hub id. Class k is the prompt
  ``prompt.format(name=class_names[k])`` (default "a photo of a {name}"; the paper prompts with
  the class name, SPEC §3.1); its CLIP embedding is computed once and cached. The null
  conditioning is the empty prompt's embedding (as in SD's CFG and the FGDS code, SPEC §3.2).
* ``dit``: DiTTransformer2DModel + AutoencoderKL (folder with transformer/, vae/, scheduler/),
  conditioned on ImageNet-1k class ids (`class_ids[k]` for class k); the null class is
  `num_embeds_ada_norm` (1000). DiT predicts epsilon and a learned variance: only the first half
  of its output channels (epsilon) is used, DDIM needs nothing else.

`decode` runs the VAE decoder on x0 / vae.config.scaling_factor with gradients, maps [-1, 1] to
[0, 1] and optionally resizes (antialiased bilinear, differentiable) to `image_size`, so the
guidance gradient flows from the learner through the resize and the decoder into the latent.
Models may run in float16 / bfloat16; the sampler's latents and the scheduler stay float32.
Weights are read as safetensors only, and no remote code is ever executed.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from deliberate.config import field
from deliberate.errors import DeliberateError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_WNID = re.compile(r"^n\d{8}$")


@dataclass
class LatentSettings:
    """Options of the latent backends (ignored by the pixel backend)."""

    prompt: str = field(
        "a photo of a {name}",
        "Stable Diffusion prompt template; {name} is the class name (paper: the class name)",
    )
    dtype: str = field(
        "float32", "weights and activations of UNet/DiT, VAE, text encoder", choices=tuple(DTYPES)
    )
    gradient_checkpointing: bool = field(
        False, "recompute denoiser and VAE activations in the guidance backward (saves memory)"
    )
    image_size: int = field(
        0, "side of the stored images (differentiable resize of the decode); 0 = native", ge=0
    )
    class_ids: list[int] = field(
        [], "DiT: ImageNet-1k index of each class in order; [] = from the data's synset mapping"
    )

    def validate(self) -> None:
        try:
            self.prompt.format(name="x")
        except (KeyError, IndexError, ValueError):
            raise DeliberateError(
                f"generator.latent.prompt {self.prompt!r} may only use the field {{name}}"
            ) from None
        if "{name}" not in self.prompt:
            raise DeliberateError(
                f"generator.latent.prompt {self.prompt!r} lacks {{name}}: every class would get the same prompt"
            )


def _fingerprint(kind: str, extra: dict, *modules: torch.nn.Module) -> str:
    """A short id from configs, options and the first values of every weight tensor (cheap)."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for m in modules:
        config = getattr(m, "config", {})
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
        for name, p in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return f"{kind}-{h.hexdigest()[:12]}"


class _LatentBackend(torch.nn.Module):
    """What both latent backends share: the VAE decode, dtype handling, device."""

    def __init__(self, denoiser, vae, scheduler_config: dict, settings: LatentSettings):
        super().__init__()
        self.denoiser, self.vae, self.settings = denoiser, vae, settings
        self.scheduler_config = dict(scheduler_config)
        self.dtype = DTYPES[settings.dtype]
        c, s = denoiser.config.in_channels, denoiser.config.sample_size
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_shape = (c, s, s)
        side = settings.image_size or s * factor
        self.image_shape = (vae.config.out_channels, side, side)
        self.scaling = float(vae.config.scaling_factor)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def concat_cond(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b])

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> images in [0, 1] (B, 3, S, S); differentiable inside the range."""
        images = self.vae.decode(x0.to(self.dtype) / self.scaling).sample.float()  # (B, 3, H, W)
        images = ((images + 1) / 2).clamp(0, 1)
        if images.shape[-1] != self.image_shape[-1]:
            side = self.image_shape[-1]
            images = F.interpolate(images, size=(side, side), mode="bilinear", antialias=True)
        return images.clamp(0, 1)

    def _prepare(self, device: str) -> _LatentBackend:
        self.to(device=device, dtype=self.dtype).eval()
        self.requires_grad_(False)
        if self.settings.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
            self.vae.enable_gradient_checkpointing()
        return self


class StableDiffusionBackend(_LatentBackend):
    """Stable Diffusion / LDM: class k is the CLIP embedding of its prompt."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler_config, class_names,
                 settings: LatentSettings):  # fmt: skip
        super().__init__(unet, vae, scheduler_config, settings)
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.class_names = tuple(class_names)
        self.prompts = tuple(settings.prompt.format(name=n) for n in self.class_names)
        self._embeds: dict[int, torch.Tensor] = {}  # class id -> (L, D), filled on first use
        self._empty: torch.Tensor | None = None
        extra = {"prompt": settings.prompt, "dtype": settings.dtype, "size": self.image_shape}
        self.identifier = _fingerprint("sd", extra, unet, vae, text_encoder)

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        """CLIP last hidden states (B, L, D) of padded prompts, as SD's pipeline computes them."""
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    def cond(self, labels: torch.Tensor) -> torch.Tensor:
        ids = [int(k) for k in labels]
        for k in set(ids) - self._embeds.keys():
            # One prompt per call: an embedding must not depend on which classes a batch (or a
            # rank) happened to encode with it, down to the last bit of a batched matmul.
            self._embeds[k] = self._encode([self.prompts[k]])[0]
        return torch.stack([self._embeds[k] for k in ids])

    def null_cond(self, n: int) -> torch.Tensor:
        if self._empty is None:
            self._empty = self._encode([""])[0]
        return self._empty.expand(n, -1, -1)

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.denoiser(x_t.to(self.dtype), t, encoder_hidden_states=cond).sample
        return out.to(x_t.dtype)


class DiTBackend(_LatentBackend):
    """DiT: class k is ImageNet-1k class `class_ids[k]`; the null class is num_embeds_ada_norm."""

    def __init__(self, transformer, vae, scheduler_config, class_names, class_ids,
                 settings: LatentSettings):  # fmt: skip
        super().__init__(transformer, vae, scheduler_config, settings)
        self.class_names = tuple(class_names)
        self.null_id = int(transformer.config.num_embeds_ada_norm)
        if len(class_ids) != len(self.class_names):
            raise DeliberateError(
                f"DiT needs one ImageNet-1k id per class: got {len(class_ids)} ids for "
                f"{len(self.class_names)} classes; set generator.latent.class_ids or data's synset_mapping"
            )
        bad = [i for i in class_ids if not 0 <= i < self.null_id]
        if bad:
            raise DeliberateError(
                f"DiT class ids {bad[:5]} are outside 0..{self.null_id - 1}; fix generator.latent.class_ids"
            )
        self.register_buffer("class_ids", torch.tensor(list(class_ids)), persistent=False)
        extra = {"dtype": settings.dtype, "size": self.image_shape, "ids": list(class_ids)}
        self.identifier = _fingerprint("dit", extra, transformer, vae)

    def cond(self, labels: torch.Tensor) -> torch.Tensor:
        return self.class_ids[labels.to(self.class_ids.device, torch.long)]

    def null_cond(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.null_id, dtype=torch.long, device=self.device)

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.denoiser(x_t.to(self.dtype), timestep=t, class_labels=cond).sample
        return out[:, : x_t.shape[1]].to(x_t.dtype)  # learned sigma: keep the epsilon half


# -- loading ----------------------------------------------------------------------------------

SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
DIT_PARTS = ("transformer", "vae", "scheduler")


def _source(path: str | None, kind: str, parts: tuple[str, ...]) -> tuple[str, bool]:
    """(where, local): a diffusers-layout folder that has all parts, or a hub id to fetch."""
    if not path:
        raise DeliberateError(
            f"generator.kind {kind} needs generator.path: a local diffusers folder "
            "(e.g. a stable-diffusion-v1-5 snapshot) or a hub id"
        )
    p = Path(path).expanduser()
    if p.exists():
        missing = [x for x in ("model_index.json", *parts) if not (p / x).exists()]
        if missing:
            raise DeliberateError(
                f"{p} is not a diffusers {kind} folder (missing {', '.join(missing)}); "
                f"it needs model_index.json and {', '.join(parts)}/"
            )
        return str(p), True
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise DeliberateError(
            f"generator.path {path} is neither an existing folder nor a hub id like org/name"
        )
    return path, False


def _load(what: str, loader, where: str, local: bool, sub: str, **kw):
    try:
        return loader(where, subfolder=sub, local_files_only=local, **kw)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = (
            "the folder is incomplete or corrupt: re-download it"
            if local
            else "download it on a machine with internet (huggingface-cli download) and "
            "set generator.path to the folder"
        )
        raise DeliberateError(f"cannot load {what} from {where}/{sub} ({first}); {hint}") from None


def _scheduler_config(where: str, local: bool) -> dict:
    from diffusers import DDIMScheduler

    return dict(_load("the scheduler", DDIMScheduler.load_config, where, local, "scheduler"))


def load_stable_diffusion(path: str, class_names, settings: LatentSettings,
                          device: str = "cpu") -> StableDiffusionBackend:  # fmt: skip
    """Load SD / LDM components from a diffusers folder or hub id; prompts from class names."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        raise DeliberateError(
            "generator.kind stable_diffusion needs transformers: pip install 'deliberate[latent]'"
        ) from None
    settings.validate()
    wnids = [n for n in class_names if _WNID.match(n)]
    if wnids:
        raise DeliberateError(
            f"class names like {wnids[0]} are WordNet ids, not words to prompt with: set "
            "data.imagefolder.synset_mapping to LOC_synset_mapping.txt (docs/paper-scale.md)"
        )
    where, local = _source(path, "stable_diffusion", SD_PARTS)
    t0 = time.perf_counter()
    safe = {"use_safetensors": True, "low_cpu_mem_usage": False}
    unet = _load("the UNet", UNet2DConditionModel.from_pretrained, where, local, "unet", **safe)
    vae = _load("the VAE", AutoencoderKL.from_pretrained, where, local, "vae", **safe)
    text = _load("the text encoder", CLIPTextModel.from_pretrained, where, local, "text_encoder",
                 use_safetensors=True)  # fmt: skip
    tok = _load("the tokenizer", CLIPTokenizer.from_pretrained, where, local, "tokenizer")
    sched = _scheduler_config(where, local)
    backend = StableDiffusionBackend(unet, vae, text, tok, sched, class_names, settings)
    backend._prepare(device)
    backend.load_seconds = time.perf_counter() - t0
    return backend


def load_dit(path: str, class_names, class_ids, settings: LatentSettings,
             device: str = "cpu") -> DiTBackend:  # fmt: skip
    """Load DiT components from a diffusers folder or hub id; class k -> ImageNet id class_ids[k]."""
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    settings.validate()
    where, local = _source(path, "dit", DIT_PARTS)
    t0 = time.perf_counter()
    safe = {"use_safetensors": True, "low_cpu_mem_usage": False}
    net = _load("the DiT", DiTTransformer2DModel.from_pretrained, where, local, "transformer",
                **safe)  # fmt: skip
    vae = _load("the VAE", AutoencoderKL.from_pretrained, where, local, "vae", **safe)
    sched = _scheduler_config(where, local)
    backend = DiTBackend(net, vae, sched, class_names, class_ids, settings)
    backend._prepare(device)
    backend.load_seconds = time.perf_counter() - t0
    return backend
