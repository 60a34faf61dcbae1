"""A run directory on disk: its resolved config, atomic checkpoints and append-only metrics.

Resume is "run the same command again": `RunDir.claim` writes `config.yaml` on the first call and
refuses a different config afterwards; checkpoints are plain dicts of tensors and numbers written
via temp file + rename and read back with `torch.load(weights_only=True)`; `metrics.jsonl` holds
one row per evaluation and is cut back to the rows a checkpoint knows about when a run resumes.

A run folder is read and written only through its own regular files (`deliberate.data.files`):
an existing one is checked whole (`check_tree`: no symlink, FIFO or device at any depth) before
anything in it is read, and a checkpoint's structure is checked (`load_checkpoint(check=...)`)
before the run writes anything.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from deliberate import faults
from deliberate.config import load_yaml
from deliberate.data.files import (
    _one_line,
    atomic_file,
    check_regular,
    check_tree,
    open_inside,
    read_inside,
)
from deliberate.errors import DeliberateError

CONFIG_LIMIT = 2**20  # bytes of config.yaml: a resolved config is a few KiB
# Where a run keeps shared files, not what it computes: a run resumes with any value of these.
NOT_COMPARED = ("cache",)
STATE_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError)


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The dotted path of the first value that differs between two nested mappings, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            where = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                return where
            if (found := _first_difference(a[key], b[key], where)) is not None:
                return found
        return None
    return None if a == b else (path or "<root>")


def _with_defaults(old: Any, defaults: Any) -> Any:
    """`old` with the keys it lacks taken from `defaults`, recursively.

    A run folder started before a config key existed holds no value for it; it ran with what is
    now that key's default, so it resumes under a config that leaves the key at its default.
    """
    if not isinstance(old, dict) or not isinstance(defaults, dict):
        return old
    filled = {k: _with_defaults(v, defaults.get(k)) for k, v in old.items()}
    return {**{k: v for k, v in defaults.items() if k not in old}, **filled}


def _lookup(data: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        data = data.get(key, "<absent>") if isinstance(data, dict) else "<absent>"
    return data


class RunDir:
    """Paths and file I/O of one run (or branch) folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config_file = self.root / "config.yaml"
        self.checkpoint_file = self.root / "checkpoint.pt"
        self.metrics_file = self.root / "metrics.jsonl"

    def claim(self, config: dict, clean: bool = True, defaults: dict | None = None) -> None:
        """Write the resolved config, or check it equals the one this folder was started with.

        An existing folder is checked whole first (`check_tree`). `clean` deletes leftover temp
        files on resume (`clean_temp`; a caller that checks more first passes False and calls it
        later); under torchrun only rank 0 may, since the other ranks claim while rank 0 is
        already writing (pool.json, shards). `defaults` (the config class's defaults) stand in
        for keys the folder's config predates.
        """
        config = json.loads(json.dumps(config))  # tuples -> lists, as YAML gives them back
        if check_regular(self.config_file):
            check_tree(self.root)
            try:
                text = read_inside(self.root, "config.yaml", CONFIG_LIMIT).decode()
                old = load_yaml(text, str(self.config_file))
            except (OSError, ValueError, yaml.YAMLError) as e:
                why = " ".join(str(e).split())[:120]  # YAML errors span several lines
                raise DeliberateError(f"{self.config_file} is unreadable ({why}); restore it") from None
            if not isinstance(old, dict):
                raise DeliberateError(f"{self.config_file} is not a run config; restore it")
            old = _with_defaults(old, json.loads(json.dumps(defaults or {})))
            where = _first_difference(*({k: v for k, v in c.items() if k not in NOT_COMPARED}
                                        for c in (old, config)))  # fmt: skip
            if where is not None:
                raise DeliberateError(
                    f"{self.root} was started with a different config ({where}: "
                    f"{_lookup(old, where)!r} there, {_lookup(config, where)!r} here); "
                    "re-run with the same config to resume, or choose another --out"
                )
            if clean:
                self.clean_temp()
            return
        if self.root.exists() and not self.root.is_dir():
            raise DeliberateError(f"--out {self.root} is a file; choose a folder")
        for tmp in self.root.glob(".*.tmp") if self.root.is_dir() else ():
            tmp.unlink()  # a first claim killed before its rename
        if self.root.exists() and any(self.root.iterdir()):
            raise DeliberateError(
                f"{self.root} is not empty and holds no run; choose another --out"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.config_file) as f:
                f.write(yaml.safe_dump(config, sort_keys=False).encode())
                faults.point("config.tmp_written")
        except OSError as e:
            raise DeliberateError(
                f"cannot write the run folder {self.root} ({e.strerror}); choose a writable --out"
            ) from None

    def clean_temp(self) -> None:
        """Delete the temp files of writers killed mid-write (never read; the one writer only)."""
        for tmp in self.root.rglob(".*.tmp"):  # rglob never enters a symlinked folder
            if not tmp.is_dir():
                tmp.unlink(missing_ok=True)

    def save_checkpoint(self, state: dict, path: Path | None = None) -> None:
        """Write a checkpoint atomically (a crash leaves the previous one intact)."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getbuffer()
        with atomic_file(path or self.checkpoint_file) as f:
            f.write(data[: len(data) // 2])
            faults.point("checkpoint.torn")
            f.write(data[len(data) // 2 :])
            faults.point("checkpoint.tmp_written")
        faults.point("checkpoint.renamed")

    def load_checkpoint(
        self, path: Path | None = None, check: Callable[[dict], Any] | None = None
    ) -> dict | None:
        """The latest checkpoint (tensors on the CPU), or None when the run has not saved one.

        It must be a dict with a 'trainer' and a 'loop' dict; `check(ckpt)` (e.g. `Run.load`)
        may test more, and any KeyError, TypeError, ValueError or RuntimeError it raises is
        answered with one line naming the file."""
        path = path or self.checkpoint_file
        if not check_regular(path):
            return None
        try:
            with open_inside(self.root, path.relative_to(self.root)) as f:
                ckpt = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # never retried with weights_only=False
            found = re.search(r"GLOBAL (\S+)", str(e))
            if found is None:
                raise DeliberateError(f"checkpoint {path} is unreadable (damaged); delete it") from None
            raise DeliberateError(
                f"checkpoint {path} holds pickled Python objects ({found[1]}), which are never "
                "loaded (a checkpoint holds only tensors and numbers); delete it"
            ) from None
        except DeliberateError:
            raise
        except Exception as e:  # torch raises many types for a damaged file
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise DeliberateError(f"checkpoint {path} is unreadable ({first}); delete it") from None
        try:
            if not isinstance(ckpt, dict) or not all(
                isinstance(ckpt.get(key), dict) for key in ("trainer", "loop")
            ):
                raise TypeError(f"a {type(ckpt).__name__}, not a dict with 'trainer' and 'loop'")
            if check is not None:
                check(ckpt)
        except STATE_ERRORS as e:
            raise DeliberateError(
                f"checkpoint {path} has the wrong structure ({_one_line(e)[:160]}): it is not "
                "one this run wrote; delete it (or restore the right one) and re-run"
            ) from None
        return ckpt

    def metrics(self) -> list[dict]:
        """Every metrics row written so far (a line that is not a JSON object: one line)."""
        lines = [line.rstrip(b"\n") for line in self._lines()]
        rows = []
        for i, line in enumerate(lines):
            if not line:
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                raise DeliberateError(
                    f"{self.metrics_file} line {i + 1} is not a metrics row: it is damaged; "
                    "restore it, or delete the run's checkpoint.pt and metrics.jsonl"
                )
            rows.append(row)
        return rows

    def _lines(self) -> list[bytes]:
        if not check_regular(self.metrics_file):
            return []
        with open_inside(self.root, "metrics.jsonl") as f:
            return f.read().splitlines(True)

    def truncate_metrics(self, rows: int) -> None:
        """Keep the first `rows` rows: later ones were written after the checkpoint we resume."""
        lines = self._lines()
        kept = [line for line in lines[:rows] if line.endswith(b"\n")]  # never a torn last row
        with atomic_file(self.metrics_file) as f:
            f.write(b"".join(kept))

    def append_metrics(self, row: dict) -> None:
        """Append one row and flush it to disk."""
        line = json.dumps(row) + "\n"
        with open_inside(self.root, "metrics.jsonl", "a") as f:
            f.write(line[: len(line) // 2])
            f.flush()
            faults.point("metrics.torn")
            f.write(line[len(line) // 2 :])


def load_learner(path: str | Path, backend, device: str = "cpu", *, what: str = "--learner"):
    """The EMA learner saved by a run: its folder (the latest checkpoint), or a checkpoint file
    in it (a branch-out's fork.pt, a budget branch's checkpoint); the one loader every command
    uses. The architecture comes from the run's config.yaml, found next to the checkpoint or up
    to two folders above it; the weights load with `torch.load(weights_only=True)`.
    """
    from deliberate.config import from_dict, read_yaml
    from deliberate.learner import build_learner
    from deliberate.training import LearnerSettings

    path = Path(path)
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not check_regular(file):  # a symlink or FIFO is refused, not followed
        raise DeliberateError(f"{what} {path}: no checkpoint.pt there; give a run folder")
    found = (d / "config.yaml" for d in file.parents[:3] if check_regular(d / "config.yaml"))
    config = next(found, None)
    if config is None:
        raise DeliberateError(f"{what} {path}: no config.yaml beside or above the checkpoint")
    section = read_yaml(config).get("learner") or {}
    lrn = from_dict(LearnerSettings, section if isinstance(section, dict) else {}, "learner.")
    ckpt = RunDir(file.parent).load_checkpoint(file)
    c, size, _ = backend.image_shape
    net = build_learner(lrn.arch, backend.num_classes, c, size, input_size=lrn.input_size or None)
    try:
        net.load_state_dict(ckpt["trainer"]["ema"])
    except (KeyError, TypeError, RuntimeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise DeliberateError(
            f"{what} {path} does not fit this generator's {backend.num_classes} classes "
            f"and {c}x{size}x{size} images ({first[:120]})"
        ) from None
    return net.to(device).eval()
