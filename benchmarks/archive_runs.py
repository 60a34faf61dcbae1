"""Keep the small records of finished runs in the repository, so tables outlive the machine.

Usage: python benchmarks/archive_runs.py RUN_OR_SWEEP_DIR... --into benchmarks/results/NAME

Run folders hold pools of many MB and are lost with the machine that ran them (issue 15's
earlier runs were). What `benchmarks/headline.py` and `deliberate report` read from a run is
small: `config.yaml`, `summary.json`, `metrics.jsonl` and the cached pool quality
(`quality.json`, written by `deliberate report`). This copies those four files of every run
into INTO/RUN_NAME/, so that, for example,

    python benchmarks/headline.py benchmarks/results/fair/*
    deliberate report benchmarks/results/fair/* --out /tmp/report

recompute the compute-fair headline and its pool-quality table on any machine. A run name that
is already archived with other contents is an error (nothing is written): archive it under
another INTO.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from deliberate.errors import DeliberateError  # noqa: E402
from deliberate.report.runs import expand_dirs, load_run  # noqa: E402

FILES = ("config.yaml", "summary.json", "metrics.jsonl", "quality.json")


def plan(folders, into: Path) -> list[tuple[Path, Path]]:
    """(source, target) of every file to copy; raises before anything is written."""
    copies, names = [], {}
    for run_dir in expand_dirs(folders):
        load_run(run_dir)  # finished runs only
        name = run_dir.name
        if name in names and names[name] != run_dir.resolve():
            raise DeliberateError(f"two runs are named {name} ({names[name]}, {run_dir}): "
                                  "archive them under separate --into folders")  # fmt: skip
        names[name] = run_dir.resolve()
        for f in FILES:
            src, dst = run_dir / f, into / name / f
            if not src.exists():
                continue
            if dst.exists() and not filecmp.cmp(src, dst, shallow=False):
                raise DeliberateError(f"{dst} exists with other contents: archive under "
                                      "another --into, or remove it first")  # fmt: skip
            copies.append((src, dst))
    return copies


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--into", required=True, type=Path, metavar="DIR")
    args = ap.parse_args(argv)
    try:
        copies = plan(args.runs, args.into)
    except DeliberateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for src, dst in copies:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    print(f"{len({d.parent for _, d in copies})} runs, {len(copies)} files -> {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
