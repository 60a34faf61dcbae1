"""The runs a comparison reads: one finished run folder as a flat record, and the statistics
over the seeds of one setting (a label) that the tables and the plots share."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from deliberate.data.files import inside
from deliberate.errors import DeliberateError

# ---------------------------------------------------------------------------------- loading


def _metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def label_of(kind: str, cfg: dict, summary: dict) -> tuple[str, str]:
    """(method, label): method is static / DP / DP ω=0 / prune; label adds the knobs."""
    if kind == "prune":
        return "prune", f"prune R={summary['ratio']:g}"
    p, omega = cfg["practice"], cfg["guidance"]["omega"]
    if p["per_round"] == 0:  # sizes differ within a sweep: each is its own setting
        return "static", f"static {p['max_images']:,}"
    if p.get("oversample", 1) > 1:  # Fig. 5's protocol: candidates scored by the one learner
        label = f"prune in loop R={p['oversample']:g}" + (f", ω={omega:g}" if omega else "")
        return "prune in loop", label
    method = "DP ω=0" if omega == 0 else "DP"
    label = f"DP ω={omega:g}"
    if p["patience_mode"] != "incremental":
        label += f", fixed T={p['patience']}"
    if p["new_data_weight"] != 1:
        label += f", new data ×{p['new_data_weight']:g}"
    return method, label


def load_run(root: str | Path) -> dict:
    """One finished run as a flat record (raises DeliberateError when it is not finished)."""
    root = Path(root)
    summary_file = root / "summary.json"
    if not summary_file.exists():
        raise DeliberateError(f"{root} has no summary.json: run (or resume) it to the end first")
    summary = json.loads(summary_file.read_text())
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    kind = summary.get("kind", "practice")
    method, label = label_of(kind, cfg, summary)
    train = root / "train" if kind == "prune" else root
    return {
        "dir": root,
        "name": root.name,
        "kind": kind,
        "method": method,
        "label": label,
        "seed": cfg.get("seed", 0),
        "omega": 0.0 if kind == "prune" else cfg["guidance"]["omega"],
        "config": cfg,
        "summary": summary,
        "metrics": _metrics(train / "metrics.jsonl"),
        "report_dir": train / "report",
    }


def expand_dirs(paths) -> list[Path]:
    """Run folders from the paths given: a sweep folder stands for all its points."""
    out = []
    for p in map(Path, paths):
        if (p / "sweep.json").exists():
            points = json.loads((p / "sweep.json").read_text())["points"]
            out += [inside(p, r["dir"], "sweep point") for r in points]  # never outside p
        elif (p / "config.yaml").exists():
            out.append(p)
        else:
            raise DeliberateError(f"{p} holds no run (config.yaml) and no sweep (sweep.json)")
    seen = set()  # a run named twice (itself and inside its sweep) counts once
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


# ------------------------------------------------------------------------------- statistics


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample sd of the values that are not None (sd 0 for one value, NaN for none)."""
    v = np.array([x for x in values if x is not None], float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt_mean_sd(values, scale: float = 100.0, digits: int = 2) -> str:
    """The scaled values as "m ± sd" ("m" for one value, "–" for none)."""
    m, s = mean_sd([None if v is None else scale * v for v in values])
    if np.isnan(m):
        return "–"
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if len(values) > 1 else "")


def by_label(runs: list[dict]) -> dict[str, list[dict]]:
    """The runs grouped by label (the seeds of one setting), in first-seen order."""
    groups = defaultdict(list)
    for r in runs:
        groups[r["label"]].append(r)
    return dict(groups)


def series(points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, sd) of (x, y) points, y pooled over equal x."""
    by_x = defaultdict(list)
    for x, y in points:
        if y is not None:
            by_x[x].append(y)
    xs = np.array(sorted(by_x), float)
    stats = [mean_sd(by_x[x]) for x in sorted(by_x)]
    return xs, np.array([m for m, _ in stats]), np.array([s for _, s in stats])


def generated(run: dict) -> int:
    """Images the run sampled (prune: candidates + N); the pool size when not recorded."""
    s = run["summary"]
    return int(s.get("images_generated") or s["pool_size"])
