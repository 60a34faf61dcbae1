"""`deliberate generate | export`: sample class-conditional images into a pool; export a pool.

`register(subparsers)` adds both commands to the main parser. Re-running the same `generate`
completes an interrupted request.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from deliberate.errors import DeliberateError


def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--generator",
        default=None,
        metavar="DIR",
        help="generator folder (default: the shipped Fashion-MNIST model)",
    )
    p.add_argument("--steps", type=int, default=10, help="sampling steps (default: %(default)s)")
    p.add_argument(
        "--cfg",
        type=float,
        default=0.5,
        help="classifier-free guidance λ, paper convention (1+λ)·cond − λ·uncond "
        "(default: %(default)s)",
    )
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default: %(default)s)")
    p.add_argument(
        "--scheduler",
        default="ddim",
        choices=("ddim", "dpm++", "euler"),
        help="diffusers scheduler (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=250,
        help="images per batch and shard (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all)")


def cmd_generate(args) -> int:
    import torch

    from deliberate import distributed, faults
    from deliberate.config import check_fields
    from deliberate.data.codecs import PoolSettings
    from deliberate.data.imagefolder import ClassList, read_class_file
    from deliberate.data.pool import Pool
    from deliberate.generate import check_classes, generate_into_pool
    from deliberate.generators import GeneratorSettings, load_backend, pool_meta
    from deliberate.generators.latent import LatentSettings
    from deliberate.guidance import GuidanceSettings, learner_fingerprint
    from deliberate.report import save_sample_grid
    from deliberate.rounds import guided_batch, plan
    from deliberate.sampling import SamplerSettings

    if args.threads < 0:
        raise DeliberateError(f"--threads {args.threads} must be >= 0 (0: torch's default)")
    if args.batch_size < 1:
        raise DeliberateError(f"--batch-size {args.batch_size} must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    guide_flags = {"input_size": args.guide_size, "mean": args.guide_mean, "std": args.guide_std}
    if args.guide is not None and args.learner is not None:
        raise DeliberateError("--guide and --learner exclude each other: guide by a run's "
                              "learner or by a fixed classifier, not both")  # fmt: skip
    if args.guide is None and any(v is not None for v in guide_flags.values()):
        raise DeliberateError(
            "--guide-size, --guide-mean and --guide-std need --guide ARCH:WEIGHTS"
        )
    settings = SamplerSettings(steps=args.steps, cfg=args.cfg, eta=args.eta,
                               scheduler=args.scheduler)  # fmt: skip
    check_fields(settings, "--")  # e.g. "--cfg: nan is out of range"
    store = PoolSettings(codec=args.codec, quality=args.quality)
    check_fields(store, "--")  # "--quality: 0 is out of range (must be >= 1)"
    names = tuple(read_class_file(args.class_names)) if args.class_names else None
    latent = LatentSettings(prompt=args.prompt, dtype=args.dtype, class_ids=args.class_ids or [])
    gen = GeneratorSettings(
        kind=args.kind, path=args.generator, latent=latent, sampler=settings
    )  # the sampler too: a generator without a null class refuses cfg > 0 here
    backend = load_backend(gen, device=args.device, classes=names and ClassList(names, names))
    classes = check_classes(backend, args.classes)
    pairs = plan(classes, args.per_class, args.seed)
    c, h, w = backend.image_shape
    meta = {**pool_meta(backend, with_generator=False), **store.meta()}
    store.check_shape(meta["image_shape"])
    learner, guidance, extra = None, None, {"round": 0, "omega": 0.0}
    if args.learner is not None or args.guide is not None:  # entropy guidance (paper §3)
        # fmnist/dp.yaml's guidance: the default ω (unless --omega), bf16 where it is fast
        guidance = GuidanceSettings(precision="auto")
        guidance = dataclasses.replace(
            guidance,
            omega=guidance.omega if args.omega is None else args.omega,
            criterion=args.criterion or guidance.criterion,
        )
        check_fields(guidance, "--")
        if args.learner is not None:
            from deliberate.rundir import load_learner

            learner = load_learner(args.learner, backend, args.device)
        else:  # a fixed classifier steers exactly as a run's learner does
            from deliberate.guide import load_guide

            learner = load_guide(args.guide, backend, args.device, **guide_flags)
        extra = {"round": 0, "omega": guidance.omega, "fingerprint": learner_fingerprint(learner)}
        if args.guide is not None:
            arch, _, weights = args.guide.partition(":")
            extra["guide"] = f"{arch}:{Path(weights).name}"
    elif args.omega or args.criterion:
        raise DeliberateError(
            "--omega and --criterion need --learner RUN_DIR or --guide ARCH:WEIGHTS"
        )
    # The same batch the practice loop samples: guided and scored by the learner when there is
    # one, NaN pixels refused, skipped guidance steps recorded per image.
    sample_fn = guided_batch(backend, settings, learner, guidance, device=args.device, codec=store)
    faults.ensure_free_space(args.out, len(pairs) * (c * h * w + 1024), f"{len(pairs)} images")
    distributed.init("cpu")  # under torchrun: K CPU processes share the batches (gloo)
    with distributed.main_first():  # everything is checked: only now is anything written
        pool = Pool.open_or_create(args.out, meta)  # an existing pool: the same codec
    with faults.graceful_stop():
        stats = generate_into_pool(
            backend,
            pool,
            pairs,
            settings,
            batch_size=args.batch_size,
            extra=extra,
            sample_fn=sample_fn,
            progress=not args.quiet,
        )
    if not distributed.is_main():
        return 0  # rank 0 writes the grid and prints
    # The grid shows the request's first images of each class, read back from the pool.
    seeds = {s for _, s in pairs}
    import numpy as np

    cols = pool.columns(["seed", "label"])
    rows = np.flatnonzero(np.isin(cols["seed"], list(seeds)))
    shown = np.concatenate([rows[cols["label"][rows] == c_][:10] for c_ in classes])
    images, labels = pool.get(shown)
    grid = Path(args.out) / "samples.png"
    save_sample_grid(
        images,
        labels.tolist(),
        backend.class_names,
        grid,
        title=f"{backend.identifier}: {settings.steps} {settings.scheduler} steps, cfg λ={settings.cfg}",
    )
    if stats["generated"]:
        print(
            f"generated {stats['generated']} images in {stats['seconds']:.1f}s "
            f"({stats['images_per_second']:.1f} img/s)"
        )
    else:
        print("nothing to do: the pool already holds every requested image")
    print(f"pool: {args.out} ({len(pool)} images); grid: {grid}")
    return 0


def cmd_export(args) -> int:
    from deliberate.data import export
    from deliberate.data.pool import Pool

    pool = Pool(args.pool)
    try:
        if args.format == "npz":
            export.export_npz(pool, args.out, force=args.force)
        else:
            write = {"imagefolder": export.export_imagefolder, "hf": export.export_hf,
                     "webdataset": export.export_webdataset}[args.format]  # fmt: skip
            write(pool, args.out, pool.class_names, force=args.force)
    except KeyboardInterrupt:  # an export does not resume: it is built whole, then renamed
        print(f"deliberate: interrupted; nothing was written to {args.out} (an export is built "
              "under a temp name and renamed when whole); re-run the same command to export "
              "it again", file=sys.stderr)  # fmt: skip
        return 130
    print(f"exported {len(pool)} images to {args.out} ({args.format})")
    return 0


def register(subparsers) -> None:
    """Add `generate` and `export` to the `deliberate` parser."""
    p = subparsers.add_parser(
        "generate",
        help="sample class-conditional images into a pool",
        description="Sample images with DDIM + classifier-free guidance into an "
        "append-only pool and write a labelled grid (samples.png). "
        "Re-running the same command completes an interrupted request.",
    )
    p.add_argument("--per-class", type=int, required=True, help="images per class")
    p.add_argument("--out", required=True, help="pool folder (created or appended to)")
    p.add_argument("--seed", type=int, default=0, help="request seed (default: %(default)s)")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="class ids (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--kind", default="pixel", choices=("pixel", "stable_diffusion", "dit"),
                   help="generator kind; latent kinds take a diffusers folder or hub id as --generator")
    p.add_argument("--class-names", metavar="FILE", help="latent kinds: one class name per line")
    p.add_argument("--class-ids", type=int, nargs="+", help="dit: ImageNet-1k id of each class")
    p.add_argument("--prompt", default="a photo of a {name}", help="stable_diffusion prompt template")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--learner", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="guide by this run's (EMA) learner; a run folder means its latest one")
    p.add_argument("--guide", metavar="ARCH:WEIGHTS",
                   help="guide by a fixed classifier: small_resnet or a torchvision model and its "
                        ".safetensors/.pt state dict (input size, mean, std: WEIGHTS.json or the "
                        "flags below; docs/generator.md)")  # fmt: skip
    p.add_argument("--guide-size", type=int, metavar="N",
                   help="--guide's input side (else the side file's input_size)")  # fmt: skip
    p.add_argument("--guide-mean", type=float, nargs="+", metavar="M",
                   help="--guide's per-channel input mean on [0, 1] pixels")  # fmt: skip
    p.add_argument("--guide-std", type=float, nargs="+", metavar="S",
                   help="--guide's per-channel input std")  # fmt: skip
    p.add_argument("--omega", type=float, default=None,
                   help="guidance scale ω with --learner or --guide (default: "
                        "configs/fmnist/dp.yaml's; 0 = plain sampling)")  # fmt: skip
    p.add_argument("--criterion", choices=("entropy", "cross_entropy", "margin"), default=None,
                   help="what guidance raises (default: entropy)")
    p.add_argument("--codec", default="raw",  # checked by PoolSettings' choices, as in a config
                   help="how a new pool stores images: raw (uint8), png (lossless), jpeg or webp "
                        "at --quality (default: %(default)s; docs/exports.md)")  # fmt: skip
    p.add_argument("--quality", type=int, default=90,
                   help="jpeg/webp quality 1-100 (default: %(default)s)")
    _add_sampler_args(p)
    p.set_defaults(func=cmd_generate)

    p = subparsers.add_parser(
        "export",
        help="export a pool for other tools: npz, class folders, Hugging Face datasets, WebDataset",
        description="Export a pool in a form other tools read as they are (docs/exports.md). "
        "npz: one file of arrays with the manifest columns; imagefolder: 00_<class>/ folders of "
        "PNGs in label order (torchvision ImageFolder); hf: a datasets.load_from_disk folder "
        "(needs pip install 'deliberate[hf]'); webdataset: pool-000000.tar... shards of "
        "KEY.png/.cls/.json. In Python, deliberate.data.PoolDataset reads a pool directly.",
    )
    p.add_argument("pool", help="pool folder")
    p.add_argument("--format", choices=("npz", "imagefolder", "hf", "webdataset"), default="npz",
                   help="output format (default: %(default)s)")
    p.add_argument("--out", required=True, help="output .npz file or folder (must not exist)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_export)
