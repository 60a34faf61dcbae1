"""`deliberate demo | sweep | prune | report`: the experiments, each one resumable command.

`register(subparsers)` adds them to the main parser (cli/__init__.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from deliberate.cli.args import add_cache_argument, add_set_argument, cache_set

DEMO = "fmnist/demo"  # the preset


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def demo_table(out: Path) -> list[str]:
    """The demo's console table, from the run folders' summaries."""
    from deliberate.report.runs import expand_dirs, load_run

    header = ("setting", "test acc %", "shifted %", "images", "generated", "iterations",
              "gen. compute")  # fmt: skip
    rows = [header]
    for run in map(load_run, expand_dirs([out])):
        s = run["summary"]
        rows.append((run["label"], _pct(s["test_acc"]), _pct(s.get("shifted", {}).get("mean")),
                     str(s["pool_size"]), str(s.get("images_generated", s["pool_size"])),
                     str(s["iterations"]), f"{s.get('generation_compute', 0):.3g}"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return [line(rows[0]), "  ".join("-" * w for w in widths), *map(line, rows[1:])]


def cmd_demo(args) -> int:
    """The README's main command: static vs DP ω = 0 vs DP ω > 0 at one budget."""
    from deliberate.presets import resolve
    from deliberate.sweep import run_sweep

    spec = resolve(args.config or DEMO)
    out, t0 = Path(args.out), time.perf_counter()
    print(f"demo: static vs DP (omega = 0) vs DP (omega > 0) from {spec}, into {out}; "
          "re-run the same command to resume", flush=True)  # fmt: skip
    run_sweep(spec, out, [*args.set, *cache_set(args.cache)], progress=not args.quiet,
              report_dir=out)
    print("\n" + "\n".join(demo_table(out)))
    print(f"\nreport: {out / 'report.md'} ({time.perf_counter() - t0:.0f} s)")
    return 0


def cmd_sweep(args) -> int:
    from deliberate.presets import resolve
    from deliberate.sweep import describe, run_sweep

    spec = resolve(args.spec)
    sets = [*args.set, *cache_set(args.cache)]
    if args.dry_run:
        print(describe(spec, args.out, sets, args.seeds))
        return 0
    rows = run_sweep(spec, args.out, sets, args.seeds, progress=not args.quiet)
    for r in rows:
        print(f"{r['dir']}: pool {r['pool_size']}, real test {_pct(r['test_acc'])} %")
    print(f"report: {Path(args.out) / 'report' / 'report.md'}")
    return 0


def cmd_prune(args) -> int:
    from deliberate.baselines import PruneConfig, run_prune
    from deliberate.config import load_config
    from deliberate.presets import resolve

    cfg = load_config(PruneConfig, resolve(args.config), args.set)
    s = run_prune(cfg, args.out, progress=not args.quiet)
    print(f"{args.out}: kept {s['selected']} of {s['candidates']} candidates (R = {s['ratio']:g}), "
          f"pool {s['pool_size']}: real test {_pct(s['test_acc'])} % "
          f"(scorer on {s['scorer']['pool_size']}: {_pct(s['scorer']['test_acc'])} %)")  # fmt: skip
    return 0


def cmd_report(args) -> int:
    from deliberate.report.compare import write_report

    path = write_report(args.runs, args.out, title=args.title, quality=not args.no_quality)
    print(f"report: {path}")
    return 0


def register(subparsers) -> None:
    """Add demo, sweep, prune and report to the `deliberate` parser."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = subparsers.add_parser(
        "demo",
        help="static vs DP (omega = 0) vs DP (omega > 0) on Fashion-MNIST (the README's command)",
        description="Train three learners on synthetic Fashion-MNIST at one image and iteration "
        "budget: all images up front, DP without guidance, DP with entropy guidance. Prints a "
        "table and writes OUT/report.md with plots. Re-run the same command to resume.",
        formatter_class=fmt,
    )
    p.add_argument("--out", default="runs/demo", help="demo folder")
    p.add_argument("--config", default=None, help=f"sweep file or preset; none = the {DEMO} preset")
    add_set_argument(p, "learner.iterations=500")
    add_cache_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = subparsers.add_parser(
        "sweep",
        help="run a sweep file's points one after another (resumable)",
        description="Run every point of a sweep (a base config plus --set variations, times "
        "seeds) as its own run folder under OUT, skipping finished ones; then write "
        "OUT/report/. See configs/fmnist/{scaling,omega,prune,ablations}.yaml.",
        formatter_class=fmt,
    )
    p.add_argument("spec", help="sweep file, e.g. configs/fmnist/omega.yaml")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder")
    add_set_argument(p, "learner.iterations=500")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the file's seeds")
    add_cache_argument(p)
    p.add_argument("--dry-run", action="store_true", help="list the points and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser(
        "prune",
        help="oversample-then-prune baseline from a YAML config",
        description="Train a scorer on N plain images, score R x M plain candidates by its "
        "entropy, keep the M highest-entropy ones per class, train a fresh learner on them.",
        formatter_class=fmt,
    )
    p.add_argument("config", help="YAML config with a prune section, e.g. configs/fmnist/dp.yaml")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (created or resumed)")
    add_set_argument(p, "prune.ratio=8")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prune)

    p = subparsers.add_parser(
        "report",
        help="plots and tables comparing finished runs or sweeps",
        description="Read run folders (or sweep folders) and write the scaling, prune-vs-DP, "
        "omega, curves, hardness and shifted-accuracy plots plus report.md.",
        formatter_class=fmt,
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run or sweep folders")
    p.add_argument("--out", default="runs/report", help="report folder")
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--no-quality", action="store_true",
                   help="skip the pool-quality measurements (fidelity, FD, precision/recall/"
                   "density/coverage against the real test images)")  # fmt: skip
    p.set_defaults(func=cmd_report)
