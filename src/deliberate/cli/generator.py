"""`deliberate train-generator CONFIG --out DIR`: train the embedded pixel-space generator.

`register(subparsers)` adds the command to the main parser. Re-running the same command resumes.
"""

from __future__ import annotations

from deliberate.cli.args import add_set_argument


def cmd_train_generator(args) -> int:
    from deliberate.config import load_config
    from deliberate.generators.train_pixel import GeneratorConfig, train_generator
    from deliberate.presets import resolve

    cfg = load_config(GeneratorConfig, resolve(args.config), args.set)
    if args.data_dir:
        cfg.data_dir = args.data_dir
    final = train_generator(cfg, args.out, progress=not args.quiet)
    print(f"generator written to {final}; use it with --generator {final}")
    return 0


def register(subparsers) -> None:
    """Add `train-generator` to the `deliberate` parser."""
    p = subparsers.add_parser(
        "train-generator",
        help="train the embedded pixel-space diffusion generator",
        description="Train the class-conditional pixel-space generator on real images: "
        "Fashion-MNIST (fmnist/generator) or the train/ class folders of your own "
        "(imagefolder/generator, docs/your-data.md). Re-running the same command resumes.",
    )
    p.add_argument("config", help="a preset name (fmnist/generator, imagefolder/generator) or YAML")
    p.add_argument(
        "--out", required=True, help="run folder (checkpoints, sample grids, generator/)"
    )
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (idx files)")
    add_set_argument(p, "train.steps=100")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_generator)
