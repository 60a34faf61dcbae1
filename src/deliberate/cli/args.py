"""Argument helpers shared by the command modules; imports nothing else of the CLI."""

from __future__ import annotations

import argparse
import json


def add_set_argument(p: argparse.ArgumentParser, example: str) -> None:
    """The repeatable `--set key.sub=value` config override shared by config-driven commands."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, e.g. --set {example} (repeatable)")


def add_cache_argument(p: argparse.ArgumentParser) -> None:
    """`--cache DIR`: the shared round-0 cache (the config's `cache`), for run, sweep and demo."""
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="shared round-0 cache: runs whose round 0 would be the same bytes "
                   "hard-link it from DIR instead of sampling it (docs/paper-scale.md)")


def cache_set(cache: str | None) -> list[str]:
    """The `--set` override that `--cache DIR` stands for (none without it)."""
    return [] if cache is None else [f"cache={json.dumps(cache)}"]
