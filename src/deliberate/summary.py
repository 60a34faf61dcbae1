"""What a finished run records beside its metrics: `summary.json`, read by `deliberate report`.

Besides the final accuracies and the compute ledger it holds what needs the final learner and
therefore cannot be recomputed from the files later: accuracy on the shifted test suite
(`deliberate.data.shifted`) and, per round, the learner's error on that round's images when they were
added (the prediction stored in the pool manifest at generation) and at the end (Fig. 6).
The expensive parts are cached: a resumed, already finished run reuses them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from deliberate import accounting
from deliberate.cache import round0_summary
from deliberate.data.files import atomic_file, check_regular, read_inside
from deliberate.data.shifted import evaluate_shifted
from deliberate.guidance import resolve_precision
from deliberate.learner import predict

SUMMARY = "summary.json"


def fork_learners(root: str | Path, backend) -> dict[int, object]:
    """The EMA learner saved at each branch-out, by round j: the one that asked for round j + 1."""
    from deliberate.rundir import load_learner

    return {
        int(path.parent.name.split("-")[1]): load_learner(path, backend, backend.device,
                                                           what="branch-out")  # fmt: skip
        for path in sorted(Path(root).glob("branches/round-*/fork.pt"))
    }


def round_errors(learner, pool, stages: dict | None = None) -> list[dict]:
    """Per round: images, error of the learner that added them (when stored), error of `learner`.

    With `stages` (round j -> the learner at that plateau, from `fork_learners`), each round also
    gets `error_by_stage[j]`: its images under earlier and later learners (Fig. 6). Round k was
    requested by stage k - 1, so that entry equals `error_when_added`.
    """
    images, labels = pool.images_view(), pool.labels()  # streamed: pools may exceed RAM
    pred = predict(learner, images)
    staged = {j: predict(m, images) for j, m in sorted((stages or {}).items())}
    rounds, learner_pred = pool.column("round"), pool.column("learner_pred")
    out = []
    for k in sorted(set(rounds.tolist())):
        sel = rounds == k
        added = learner_pred[sel]  # -1: not stored when the round was added
        at_add = None
        if np.all(added >= 0):
            at_add = float(np.mean(added != labels[sel]))
        out.append(
            {
                "round": int(k),
                "images": int(sel.sum()),
                "error_when_added": at_add,
                "error_final": float(np.mean(pred[sel] != labels[sel])),
            }
        )
        if staged:
            out[-1]["error_by_stage"] = {
                str(j): float(np.mean(p[sel] != labels[sel])) for j, p in staged.items()
            }
    return out


def read_summary(root: str | Path) -> dict | None:
    """A finished run's summary.json (None before it finishes); never read through a symlink."""
    if not check_regular(Path(root) / SUMMARY):
        return None
    return json.loads(read_inside(root, SUMMARY, 2**26))


def write_summary(root: str | Path, summary: dict) -> dict:
    with atomic_file(Path(root) / SUMMARY) as f:
        f.write(json.dumps(summary, indent=1).encode())
    return summary


def finish_summary(
    root, cfg, backend, learner, split, pool, summary_in: dict, progress: bool = False
) -> dict:
    """Add shifted accuracy, round errors and generation compute to `summary`; write it."""
    old = read_summary(root) or {}
    same = all(old.get(k) == summary_in.get(k) for k in ("iterations", "pool_size", "test_acc"))
    extra = {k: old[k] for k in ("shifted", "round_errors", "learner_cost") if same and k in old}
    if "shifted" not in extra and cfg.data.kind != "fashion_mnist":
        extra["shifted"] = {}  # ImageFolder data has real shifted sets instead (data.imagefolder.ood)
    if "shifted" not in extra:
        images, labels = split.test_images, split.test_labels
        extra["shifted"] = evaluate_shifted(learner, images, labels, progress=progress)
    if "round_errors" not in extra:
        extra["round_errors"] = round_errors(learner, pool, fork_learners(root, backend))
    if "learner_cost" not in extra:
        extra["learner_cost"] = accounting.flop_ratio(backend, learner)
    through = cfg.guidance.through_denoiser
    trained = summary_in["iterations"] * cfg.learner.batch_size
    summary = {"kind": "practice", "learner_images": trained, "images_discarded": 0}
    summary.update(summary_in, **extra)
    summary["generation_compute"] = accounting.generation_compute(
        summary, summary["learner_cost"], through
    )
    if cfg.guidance.omega > 0:  # what `auto` resolved to here (a run resumed elsewhere may mix)
        summary["guidance_precision"] = resolve_precision(cfg.guidance.precision, backend.device)
    return write_summary(root, summary)


def loop_summary(rd, state, *, branches: list, budgets: list, prefixes: list) -> dict:
    """The run's own numbers: final pool and accuracies, its branches, the ledger so far."""
    last = rd.metrics()[-1]
    return {
        "pool_size": state.pool_size,
        "rounds": state.round,
        "iterations": last["iteration"],
        "val_acc": last["val_acc"],
        "test_acc": last["test_acc"],
        "branches": branches,
        **({"budgets": budgets} if budgets else {}),
        **({"prefixes": prefixes} if prefixes else {}),
        **{k: last[k] for k in state.ledger},
        **round0_summary(rd.root),  # round0_cached, round0_cache: what the cache saved
    }


def summarize_run(rd, cfg, backend, learner, split, pool, classes, summary: dict,
                  progress: bool = False) -> dict:  # fmt: skip
    """Everything a finished practice run records besides its metrics; writes its report."""
    from deliberate import faults
    from deliberate.data.imagefolder import evaluate_ood
    from deliberate.report import write_practice_report
    from deliberate.rounds import load_twins

    if cfg.data.kind == "imagefolder" and cfg.data.imagefolder.ood:
        ood_file = rd.root / "ood.json"
        summary["ood"] = evaluate_ood(learner, cfg.data.imagefolder, classes, ood_file)
    twins = load_twins(rd.root)
    summary["twin_entropy"] = {
        k: [float(t["entropy_plain"].mean()), float(t["entropy_guided"].mean())]
        for k, t in sorted(twins.items())
    }
    summary = finish_summary(rd.root, cfg, backend, learner, split, pool, summary, progress)
    faults.point("report.started")
    write_practice_report(rd.root, rd.metrics(), pool, summary, twins)
    faults.point("report.written")
    return summary
