"""Sweeps: one base config, many `--set` variations, run one after another, resumable.

A sweep file (configs/fmnist/{scaling,omega,prune,ablations}.yaml) holds:

    kind: practice            # practice (Algorithm 1 / static) or prune (oversample-then-prune)
    base: dp.yaml             # config the points vary; relative to the sweep file
    vars: {budget: 2500}      # named numbers, used as "{budget}" in any value below
    set: {learner.iterations: 1000}        # overrides for every point
    grid:                     # the cartesian product of these axes ...
      guidance.omega: [0.0, 0.02, 0.05]    #   a dotted key and its values, or
      size: [{name: n500, practice.initial: 500, practice.max_images: 500}]  # mappings
    points:                   # ... and/or named points, each with its own base/kind if needed
      - {name: fixed, set: {practice.patience_mode: fixed}}
    seeds: [0, 1, 2]          # every point runs once per seed (`seed=` override)

Overrides apply in order: base file, `set`, the point's values, the command line's `--set`, the
seed. String values may use {out} (the sweep folder), {seed} and the vars; a value that is
exactly "{name}" takes the var's type. `--set name=value` with a var's name changes the var, so
one override resizes every point consistently (e.g. the static point's initial = budget).
Each point is an ordinary run folder OUT/<name>-s<seed>; a finished one (its summary.json
exists and its config matches) is skipped, so re-running the sweep resumes it. OUT/sweep.json
lists the points and their results; OUT/report/ is rewritten at the end. Seeds may be added
later (`--seeds`): the finished points are skipped.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from deliberate.config import load_config, read_yaml, to_dict
from deliberate.data.files import atomic_file
from deliberate.errors import DeliberateError
from deliberate.rundir import RunDir
from deliberate.summary import read_summary

KINDS = ("practice", "prune")
SPEC_KEYS = ("kind", "base", "vars", "set", "grid", "points", "seeds", "title")


@dataclass
class Point:
    """One run of a sweep: where, what, and with which overrides."""

    name: str
    kind: str
    base: Path | None
    overrides: list[str]
    seed: int

    @property
    def folder(self) -> str:
        return f"{self.name}-s{self.seed}"


def kind_runner(kind: str) -> tuple[type, object]:
    if kind == "prune":
        from deliberate.baselines import PruneConfig, run_prune

        return PruneConfig, run_prune
    from deliberate.practice import PracticeConfig, run_practice

    return PracticeConfig, run_practice


def _slug(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "x"


def _axis_values(key: str, values) -> list[tuple[str, dict]]:
    """(name part, {dotted key: value}) per value of one grid axis."""
    if not isinstance(values, list) or not values:
        raise DeliberateError(f"sweep grid axis '{key}' must be a non-empty list")
    out = []
    for v in values:
        if isinstance(v, dict):
            sets = {k: x for k, x in v.items() if k != "name"}
            name = v.get("name") or "_".join(
                f"{k.split('.')[-1]}{_slug(x)}" for k, x in sets.items()
            )
            out.append((str(name), sets))
        elif "." in key:
            out.append((f"{key.split('.')[-1]}{_slug(v)}", {key: v}))
        else:
            raise DeliberateError(
                f"sweep grid axis '{key}' is not a dotted config key, so its values must be "
                "mappings of overrides"
            )
    return out


def load_spec(path: str | Path) -> dict:
    """Read and check a sweep file; `base` paths become absolute."""
    path = Path(path)
    spec = read_yaml(path)
    if unknown := [k for k in spec if k not in SPEC_KEYS]:
        raise DeliberateError(f"{path}: unknown sweep key(s) {unknown}; valid: {list(SPEC_KEYS)}")
    if not spec.get("grid") and not spec.get("points"):
        raise DeliberateError(f"{path}: a sweep needs a 'grid' or a list of 'points'")
    spec = dict(spec)
    for entry in [spec, *(spec.get("points") or [])]:
        if entry.get("base") is not None:
            entry["base"] = str((path.parent / entry["base"]).resolve())
        if entry.get("kind", "practice") not in KINDS:
            raise DeliberateError(f"{path}: kind '{entry['kind']}' is not one of {KINDS}")
    return spec


def expand(spec: dict, out: str | Path, cli_sets: list[str] = (), seeds=None) -> list[Point]:
    """The sweep's points, in run order: seeds outermost, then grid, then listed points."""
    variables = dict(spec.get("vars") or {})
    plain_sets = []
    for item in cli_sets:
        key, _, raw = item.partition("=")
        if key in variables:
            variables[key] = yaml.safe_load(raw)
        else:
            plain_sets.append(item)

    def fmt(v, seed):
        if not isinstance(v, str):
            return v
        ctx = {**variables, "out": str(out), "seed": seed}
        whole = re.fullmatch(r"\{(\w+)\}", v)
        if whole and whole.group(1) in ctx:
            return ctx[whole.group(1)]
        try:
            return v.format(**ctx)
        except (KeyError, IndexError, ValueError) as e:
            raise DeliberateError(
                f"sweep value {v!r}: unknown name {e}; define it in vars"
            ) from None

    common = dict(spec.get("set") or {})
    variants = []  # (name, kind, base, sets)
    grid = spec.get("grid") or {}
    axes = [_axis_values(k, v) for k, v in grid.items()]
    for combo in itertools.product(*axes) if axes else []:
        sets = {k: v for _, s in combo for k, v in s.items()}
        variants.append(
            ("_".join(n for n, _ in combo), spec.get("kind", "practice"), spec.get("base"), sets)
        )
    for i, p in enumerate(spec.get("points") or []):
        if not isinstance(p, dict):
            raise DeliberateError(f"sweep point {i} must be a mapping with name/set/base/kind")
        name = p.get("name") or f"point{i}"
        variants.append((str(name), p.get("kind", spec.get("kind", "practice")),
                         p.get("base", spec.get("base")), p.get("set") or {}))  # fmt: skip
    names = [v[0] for v in variants]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise DeliberateError(f"sweep point names repeat: {dup}; give the points distinct names")
    points = []
    for seed in seeds if seeds is not None else spec.get("seeds") or [0]:
        for name, kind, base, sets in variants:
            merged = {**common, **sets}
            overrides = [f"{k}={json.dumps(fmt(v, seed))}" for k, v in merged.items()]
            overrides += [*plain_sets, f"seed={int(seed)}"]
            points.append(
                Point(_slug(name), kind, Path(base) if base else None, overrides, int(seed))
            )
    return points


def run_sweep(
    spec_path: str | Path,
    out: str | Path,
    cli_sets: list[str] = (),
    seeds=None,
    progress: bool = True,
    echo=print,
    report_dir: str | Path | None = None,
) -> list[dict]:
    """Run (or resume) every point of a sweep; returns one row per point; writes OUT/report/."""
    spec, root = load_spec(spec_path), Path(out)
    points = expand(spec, root, list(cli_sets), seeds)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_file(root / "sweep.yaml") as f:  # a record; each point's config.yaml is checked
        f.write(yaml.safe_dump({"spec": spec, "set": list(cli_sets)}, sort_keys=False).encode())
    rows = []
    for i, p in enumerate(points, 1):
        cls, run = kind_runner(p.kind)
        cfg = load_config(cls, p.base, p.overrides)  # validates before anything runs
        folder = root / p.folder
        if folder.exists():
            RunDir(folder).claim(to_dict(cfg), defaults=to_dict(cls()))  # refuses a changed config
        done = read_summary(folder) if (folder / "config.yaml").exists() else None
        t0 = time.perf_counter()
        if done is None:
            echo(f"[{i}/{len(points)}] {p.folder}: running ({p.kind})")
            summary = run(cfg, folder, progress=progress)
        else:
            echo(f"[{i}/{len(points)}] {p.folder}: finished earlier, skipped")
            summary = done
        rows.append(
            {
                "name": p.name,
                "seed": p.seed,
                "dir": p.folder,
                "kind": p.kind,
                "overrides": p.overrides,
                "skipped": done is not None,
                "seconds": round(time.perf_counter() - t0, 1),
                "pool_size": summary["pool_size"],
                "test_acc": summary["test_acc"],
            }
        )
        with atomic_file(root / "sweep.json") as f:
            f.write(json.dumps({"title": spec.get("title"), "points": rows}, indent=1).encode())
    from deliberate.report.compare import write_report

    report = Path(report_dir) if report_dir else root / "report"
    # pool quality is left to `deliberate report` (it reads the real test set and a judge)
    write_report([root / r["dir"] for r in rows], report, title=spec.get("title"), quality=False)
    return rows


def describe(spec_path: str | Path, out: str | Path, cli_sets=(), seeds=None) -> str:
    """The points a sweep would run, one per line (for --dry-run)."""
    pts = expand(load_spec(spec_path), Path(out), list(cli_sets), seeds)
    return "\n".join(f"{p.folder}: {p.kind} {p.base} {' '.join(p.overrides)}" for p in pts)
