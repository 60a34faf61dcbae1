"""Generators: which one a run uses (`GeneratorSettings`) and how it is loaded (`load_backend`).

    base.py     the backend contract the sampler drives (any generator, pixel or latent)
    pixel.py    the class-conditional pixel-space UNet (the shipped Fashion-MNIST generator)
    foreign.py  a class-conditional UNet2DModel that diffusers saved (no deliberate.json)
    latent.py   Stable Diffusion and DiT through diffusers, decoded by their VAE
    train.py    the trainer of the pixel-space generator (`deliberate train-generator`)
"""

from __future__ import annotations

from dataclasses import dataclass

from deliberate.config import field
from deliberate.errors import DeliberateError
from deliberate.generators.latent import LatentSettings, load_dit, load_stable_diffusion
from deliberate.sampling import SamplerSettings

KINDS = ("pixel", "stable_diffusion", "dit")


@dataclass
class GeneratorSettings:
    """Which generator, and how it samples (everything but label, seed and guidance)."""

    kind: str = field("pixel", "pixel, stable_diffusion or dit", choices=KINDS)
    path: str | None = field(None, "folder or hub id; null = the shipped Fashion-MNIST model")
    latent: LatentSettings = field(LatentSettings(), "prompt, dtype, checkpointing (latent kinds)")
    sampler: SamplerSettings = field(
        SamplerSettings(), "steps, CFG λ (paper Eq. 5), eta, scheduler"
    )
    batch_size: int = field(250, "images per sampling batch (and pool shard)", ge=1)


def load_backend(settings, *, device: str = "cpu", classes=None):
    """The generator a `GeneratorSettings` names (`kind`: pixel | stable_diffusion | dit).

    `classes` (a `data.imagefolder.ClassList`, or None) gives the class names to prompt with and,
    for DiT, their ImageNet-1k ids; the pixel backend carries its own classes and must match
    (a diffusers-saved pixel folder takes its names, and its null class, from them). A generator
    without a null class is refused here when `settings.sampler.cfg` > 0.
    """
    kind, latent = settings.kind, settings.latent
    if kind not in KINDS:
        raise DeliberateError(f"generator.kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "pixel":
        from deliberate.generators.pixel import load_pixel_backend

        backend = load_pixel_backend(settings.path, device=device, classes=classes)
        if classes is not None and len(classes.names) != backend.num_classes:
            raise DeliberateError(
                f"the pixel generator has {backend.num_classes} classes but the data has "
                f"{len(classes.names)}; use a generator trained on these classes (generator.path)"
            )
        if classes is not None and tuple(backend.class_names) != tuple(classes.names):
            pairs = zip(backend.class_names, classes.names, strict=True)  # counts checked above
            k = next(i for i, (a, b) in enumerate(pairs) if a != b)
            raise DeliberateError(
                f"the pixel generator's class {k} is {backend.class_names[k]!r} but the data's is "
                f"{classes.names[k]!r}; use a generator trained on these class folders (generator.path)"
            )
        if backend.null_class is None and settings.sampler.cfg > 0:
            raise DeliberateError(
                f"the generator at {settings.path} has no null class ({backend.num_classes} class "
                f"embeddings for {backend.num_classes} classes), so classifier-free guidance "
                f"cfg {settings.sampler.cfg:g} is impossible; pass --cfg 0 "
                "(generator.sampler.cfg: 0 in a config)"
            )
        return backend
    if classes is None:
        raise DeliberateError(f"generator.kind {kind} needs the data's class list")
    if kind == "stable_diffusion":
        return load_stable_diffusion(settings.path, classes.names, latent, device)
    ids = list(latent.class_ids) or list(classes.imagenet_ids or [])
    if not ids:
        raise DeliberateError(
            "DiT needs the ImageNet-1k id of every class: set generator.latent.class_ids, or "
            "data.imagefolder.synset_mapping (LOC_synset_mapping.txt, in ImageNet-1k order)"
        )
    return load_dit(settings.path, classes.names, ids, latent, device)


def check_fits(backend, split) -> None:
    """Refuse a generator whose classes or image shape differ from the real evaluation data."""
    classes = int(split.val_labels.max()) + 1
    ndim = getattr(split.val_images, "ndim", None)  # arrays: Fashion-MNIST, preloaded folders
    if ndim == 3:  # (N, H, W) grey
        shape = (1, *split.val_images.shape[1:])
    elif ndim == 4:  # (N, H, W, C)
        n, h, w, c = split.val_images.shape
        shape = (c, h, w)
    else:  # streamed at the learner's input size
        shape = None
    if backend.num_classes != classes:
        raise DeliberateError(
            f"the generator has {backend.num_classes} classes but the dataset has {classes}; "
            "set generator.path to a generator trained on this dataset"
        )
    if shape is not None and tuple(backend.image_shape) != shape:
        raise DeliberateError(
            f"the generator makes {tuple(backend.image_shape)} images but the dataset has "
            f"{shape}; set generator.path to a generator trained on this dataset"
        )


def pool_meta(backend, *, with_generator: bool = True) -> dict:
    """What a pool records of the generator that fills it (`Pool.open_or_create` checks it)."""
    c, h, w = backend.image_shape
    meta = {
        "class_names": list(backend.class_names),
        "num_classes": backend.num_classes,
        "image_shape": [h, w] if c == 1 else [h, w, c],
    }
    return {**meta, "generator": backend.identifier} if with_generator else meta
