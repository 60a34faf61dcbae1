"""Argument helpers shared by the command modules; imports nothing else of the CLI."""

from __future__ import annotations

import argparse


def add_set_argument(p: argparse.ArgumentParser, example: str) -> None:
    """The repeatable `--set key.sub=value` config override shared by config-driven commands."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, e.g. --set {example} (repeatable)")
