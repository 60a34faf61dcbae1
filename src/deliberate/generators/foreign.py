"""Class-conditional pixel models saved by diffusers itself: no `deliberate.json` needed.

A folder written by `DDPMPipeline(unet, scheduler).save_pretrained(dir)` (model_index.json,
unet/, scheduler/), or a bare unet/ + scheduler/ pair, loads as `generator.kind: pixel` when its
unet is a `UNet2DModel` with `num_class_embeds`. What our own `deliberate.json` would say is
read from the diffusers configs instead, by these rules (docs/generator.md):

* **Image shape**: `sample_size` × `sample_size` × `in_channels` (1 or 3; `out_channels` must
  equal it); no pixel-unshuffle; pixels in [-1, 1], diffusers' convention (DDPMPipeline's).
* **Classes**: the embeddings are the classes. Given a class list of K names (a run's data, or
  `generate --class-names FILE`), a model with K embeddings has no null class and one with
  K + 1 has its null class last (id K), the convention of label-dropout CFG training (ours
  too); any other count is refused. Without a class list the E embeddings are classes
  "0", …, "E-1" and there is no null class. Without a null class only cfg 0 samples.
* **Schedule**: betas, `prediction_type` and the rest from the scheduler config, whatever
  diffusers scheduler wrote it (DDPM's, DDIM's, PNDM's); the sampler builds its own from it.
* **Identifier**: "pixel-" + a hash of the weights file and the scheduler config.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from deliberate.errors import DeliberateError

WEIGHTS = "diffusion_pytorch_model.safetensors"
PREDICTIONS = ("epsilon", "v_prediction", "sample")


def is_diffusers_folder(path: Path) -> bool:
    """Whether `path` looks like a diffusers save with a unet (pipeline or bare unet/ + scheduler/)."""
    return (path / "unet" / "config.json").is_file()


def _read_json(file: Path, what: str) -> dict:
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise DeliberateError(f"{file.parent.parent} has no {file.parent.name}/{file.name}; "
                              f"save the {what} with save_pretrained next to unet/") from None  # fmt: skip
    except (OSError, ValueError) as e:
        raise DeliberateError(
            f"{file} is unreadable ({type(e).__name__}); re-save the {what}"
        ) from None
    if not isinstance(data, dict):
        raise DeliberateError(f"{file} is not a diffusers {what} config; re-save the {what}")
    return data


def _image_side(path: Path, config: dict) -> tuple[int, int]:
    """(channels, side) of the images the UNet makes; refuses what the pixel backend cannot."""
    size, c_in, c_out = (config.get(k) for k in ("sample_size", "in_channels", "out_channels"))
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise DeliberateError(
            f"{path}/unet has sample_size {size!r}; kind pixel needs square images of at least "
            "8x8 (an int sample_size), re-save the UNet with one"
        )
    if c_in not in (1, 3) or c_out != c_in:
        raise DeliberateError(
            f"{path}/unet has in_channels={c_in}, out_channels={c_out}; kind pixel needs a UNet "
            "that denoises 1- or 3-channel images (out_channels = in_channels, no learned variance)"
        )
    return c_in, size


def _classes(path: Path, embeds: int, classes) -> tuple[list[str], int | None]:
    """(class names, null class id or None) by the rules of the module docstring."""
    if classes is None:
        return [str(k) for k in range(embeds)], None
    k = len(classes.names)
    if embeds == k:
        return list(classes.names), None
    if embeds == k + 1:
        return list(classes.names), k
    raise DeliberateError(
        f"the generator at {path} has {embeds} class embeddings but the data has {k} classes "
        f"(a diffusers folder needs {k}, or {k + 1} with the null class last); use a generator "
        "trained on these classes"
    )


def _scheduler(path: Path) -> dict:
    """The scheduler config, checked to drive DDIM (the sampler's default) as it is."""
    from diffusers import DDIMScheduler

    config = _read_json(path / "scheduler" / "scheduler_config.json", "scheduler")
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTIONS:
        raise DeliberateError(
            f"{path}/scheduler has prediction_type {kind!r}; the sampler knows "
            f"{', '.join(PREDICTIONS)}: fix scheduler_config.json"
        )
    try:
        DDIMScheduler.from_config(config)
    except (ValueError, TypeError, NotImplementedError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise DeliberateError(
            f"{path}/scheduler is not a usable noise schedule ({first})"
        ) from None
    return {**config, "prediction_type": kind}


def read_diffusers_folder(path: Path, classes=None) -> tuple:
    """(unet, scheduler config, meta) of a diffusers-saved class-conditional UNet2DModel, checked
    by the rules above; `generators.pixel.load_pixel_backend` makes the backend of them."""
    from diffusers import UNet2DModel

    config = _read_json(path / "unet" / "config.json", "UNet")
    name = config.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        hint = " (for Stable Diffusion use --kind stable_diffusion)" if "Condition" in name else ""
        raise DeliberateError(
            f"{path}/unet is a {name}; kind pixel needs a class-conditional UNet2DModel{hint}"
        )
    embeds, embed_type = config.get("num_class_embeds"), config.get("class_embed_type")
    if not isinstance(embeds, int) or embeds < 1 or embed_type is not None:
        raise DeliberateError(
            f"{path}/unet is not class-conditional (num_class_embeds: {embeds!r}, "
            f"class_embed_type: {embed_type!r}); kind pixel needs a UNet2DModel with num_class_embeds"
        )
    channels, side = _image_side(path, config)
    names, null = _classes(path, embeds, classes)
    sched = _scheduler(path)
    weights = path / "unet" / WEIGHTS
    if not weights.is_file():
        found = sorted(p.name for p in (path / "unet").glob("*.bin"))
        why = f"only {found[0]}, which is never unpickled" if found else "no weights"
        raise DeliberateError(
            f"{path}/unet has {why}; save the UNet with save_pretrained(safe_serialization=True)"
        )
    try:
        unet = UNet2DModel.from_pretrained(
            path / "unet", use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise DeliberateError(f"generator at {path} is corrupt ({first}); re-save it") from None
    h = hashlib.sha256(weights.read_bytes())
    h.update(json.dumps(sched, sort_keys=True).encode())
    meta = {
        "class_names": names,
        "image_size": side,
        "image_channels": channels,
        "unshuffle": 1,
        "null_class": null,
        "identifier": "pixel-" + h.hexdigest()[:12],
    }
    return unet, sched, meta
