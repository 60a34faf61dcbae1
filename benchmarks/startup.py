"""Start-up cost of the commands: what a user waits for before any work begins.

Each row is the median wall time of fresh `python` processes (1 thread): the import of what a
command needs (`deliberate --help` imports no torch; `run` needs the practice loop; `generate`
the generator; `report` the plots), and one tiny `generate` end to end (1 image, 1 step) whose
time is nearly all start-up. `-X importtime` names the largest imports of `deliberate.practice`.

    python benchmarks/startup.py [--repeats 5] [--against OTHER/src]

With `--against`, every measurement alternates between this checkout and another source tree
(e.g. a worktree of an older commit), so both columns share the machine's load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

IMPORTS = {
    "deliberate --help": "import sys; sys.argv=['deliberate','--help']\n"
    "from deliberate.cli import main\ntry: main()\nexcept SystemExit: pass",
    "run: import deliberate.practice": "import deliberate.practice",
    "generate: + the pixel generator": "import deliberate.practice, deliberate.generators.pixel",
    "report: import deliberate.report": "import deliberate.report.compare",
}


def wall(args: list[str], src: str | None = None) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if src:
        env["PYTHONPATH"] = src
    t0 = time.perf_counter()
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def largest_imports(code: str, n: int = 6) -> list[tuple[str, float]]:
    """The n largest cumulative top-level imports (seconds) of `code`, from -X importtime."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stderr  # fmt: skip
    rows = []
    for line in out.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
        depth = (len(name) - len(name.lstrip())) // 2
        if depth <= 1:
            rows.append((name.strip(), int(cumulative) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--against", default=None, metavar="SRC", help="another tree's src/ to compare")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, 1 thread, "
          f"median of {args.repeats} fresh processes\n")  # fmt: skip
    srcs = [None, args.against] if args.against else [None]
    head = "| what | median s |" + (" against: median s | ratio |" if args.against else "")
    print(head + "\n|---|---|" + ("---|---|" if args.against else ""))

    def row(what, make_args):
        runs = {src: [] for src in srcs}
        for i in range(args.repeats):
            for src in srcs:  # interleaved: both trees see the same load
                runs[src].append(wall(make_args(i, src), src))
        meds = [statistics.median(runs[src]) for src in srcs]
        extra = f" {meds[1]:.2f} | {meds[1] / meds[0]:.2f}x |" if args.against else ""
        print(f"| {what} | {meds[0]:.2f} |{extra}", flush=True)

    for what, code in IMPORTS.items():
        row(what, lambda i, src, code=code: [sys.executable, "-c", code])
    with tempfile.TemporaryDirectory() as tmp:
        row("generate 1 image, 1 step (end to end)",
            lambda i, src: [sys.executable, "-m", "deliberate.cli", "generate", "--per-class", "1",
                            "--classes", "0", "--steps", "1", "--out",
                            os.path.join(tmp, f"pool-{i}-{bool(src)}"), "--quiet", "--threads",
                            "1"])  # fmt: skip
    print("\nlargest imports of deliberate.practice (cumulative s, one process):")
    for name, seconds in largest_imports("import deliberate.practice"):
        print(f"  {name}: {seconds:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
