"""The `deliberate` command: thin subcommands over library functions.

One module per command group adds its subcommands with `register(subparsers)` and holds their
`cmd_*` handlers, which import what they need when they run (so `--help` imports no torch):
`generator` (train-generator), `pool` (generate, export), `theory` (theory ...), `run` (run),
`experiments` (demo, sweep, prune, report); `args` holds the argument helpers they share.
Library code raises `DeliberateError` for bad input; `main` prints it as one line and returns 2.
Nothing below this module exits the process.
"""

from __future__ import annotations

import argparse
import errno
import sys

from deliberate.errors import DeliberateError
from deliberate.faults import Interrupted


def build_parser() -> argparse.ArgumentParser:
    # The command modules are imported here, not at the top, so that `python -m
    # deliberate.cli.theory` does not find its module already imported by this package.
    from deliberate.cli import experiments, generator, pool, run, theory

    parser = argparse.ArgumentParser(
        prog="deliberate",
        description="Deliberate Practice: train classifiers on entropy-guided synthetic images.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (generator, pool, theory, run, experiments):  # the order of `--help`
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `deliberate` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse's own message, with the fix for the commonest slip
        hint = ""
        if any("=" in a and not a.startswith("-") for a in extra) and hasattr(args, "set"):
            hint = "; give each override its own --set, e.g. --set a.b=1 --set c=2"
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    try:
        return int(args.func(args) or 0)
    except DeliberateError as e:
        print(f"deliberate: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk mid-write: every write is atomic or repaired on re-run
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = getattr(args, "out", None) or e.filename or "the output"
        print(f"deliberate: error: the disk of {where} is full ({e.strerror}); everything "
              "written so far is kept: free space, then re-run the same command", file=sys.stderr)  # fmt: skip
        return 2
    except Interrupted as e:  # SIGINT/SIGTERM honoured at a safe point
        print(f"deliberate: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("deliberate: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:  # leave torchrun's process group if the command joined one (no torch import here)
        if (dist := sys.modules.get("deliberate.distributed")) is not None:
            dist.shutdown()
