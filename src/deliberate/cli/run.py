"""`deliberate run CONFIG --out DIR`: Deliberate Practice (Algorithm 1) or its static baseline.

`register(subparsers)` adds the command to the main parser. Re-running the same command resumes an
interrupted run; a different config aimed at the same folder is refused with one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deliberate.cli.args import add_cache_argument, add_set_argument, cache_set


def cmd_run(args) -> int:
    from deliberate import distributed
    from deliberate.config import load_config
    from deliberate.errors import DeliberateError
    from deliberate.practice import PracticeConfig, run_practice
    from deliberate.presets import resolve

    config = args.config and resolve(args.config)
    if config is None:  # resume with the config the run was started with
        config = Path(args.out) / "config.yaml"
        if not config.is_file():
            raise DeliberateError(f"{args.out} holds no run to resume; give a CONFIG file")
    cfg = load_config(PracticeConfig, config, [*args.set, *cache_set(args.cache)])
    s = run_practice(cfg, args.out, progress=not args.quiet,
                     tensorboard=args.tensorboard)  # under torchrun: on every rank
    if not distributed.is_main():
        return 0  # rank 0 prints the result
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    print(
        f"{args.out}: pool {s['pool_size']} images ({s['rounds']} guided round(s)), "
        f"{s['iterations']} iterations: real val {pct(s['val_acc'])}, real test {pct(s['test_acc'])}"
    )
    for b in s["branches"]:
        print(
            f"  branch-out at round {b['round']} (pool {b['pool_size']}): "
            f"val {pct(b['val_acc'])}, test {pct(b['test_acc'])}"
        )
    print(f"report: {Path(args.out) / 'report'}")
    return 0


def cmd_presets(args) -> int:
    from deliberate import presets

    names = presets.names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {presets.describe(name)}")
    print(f"\n({presets.ROOT}; use a name wherever a config file goes: deliberate run fmnist/dp ...)")
    return 0


def register(subparsers) -> None:
    """Add `run` to the `deliberate` parser."""
    p = subparsers.add_parser(
        "run",
        help="run Deliberate Practice (or the static baseline) from a YAML config",
        description="Train a learner on synthetic images, adding entropy-guided images whenever "
        "real validation accuracy plateaus (Algorithm 1). Re-run the same command to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "config",
        nargs="?",
        default=None,
        help="YAML config file, or a preset name such as fmnist/dp (`deliberate presets`); "
        "omit to resume DIR with its saved config.yaml",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (created or resumed)")
    add_set_argument(p, "practice.patience=3")
    add_cache_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--tensorboard", metavar="TB_DIR", default=None,
                   help="also write the metrics rows as TensorBoard scalars (a live view)")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser(
        "presets",
        help="list the YAML presets shipped with the package",
        description="Every preset's name (usable wherever a config file is) and what it is.",
    )
    p.set_defaults(func=cmd_presets)
