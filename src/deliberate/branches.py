"""Runs that fork from a practice run and finish on a frozen pool: resumable, then cached.

    branch-outs      before each round is added, the state is forked; each fork finishes the
                     schedule on the pool as it was: one more (pool size, accuracy) point (§2.2)
    budget branches  `learner.budgets`: where a shorter budget's cool-down starts, the state is
                     forked; it cools down to that budget on the pool as it is then. Until there
                     the schedules agree (shared warm-up, constant lr), so the branch equals a
                     separate run of that length (docs/experiments.md, the compute-fair protocol)
    prefix learners  `practice.prefixes` (static runs): a fresh learner on the first n images of
                     D_0, which is the n-image static pool (the seed plan is prefix-stable)

Each finished branch writes `result.json` in its folder; a re-run reads it instead of training.
`main` is the run the branch belongs to (a `practice.Run`); `main.branch(...)` makes its sibling.
"""

from __future__ import annotations

import dataclasses
import json

from deliberate import distributed, faults
from deliberate.data.files import atomic_file, check_regular, read_inside
from deliberate.errors import DeliberateError
from deliberate.rundir import RunDir


def _fork(run, folder, state) -> None:
    if distributed.is_main():
        folder.mkdir(parents=True, exist_ok=True)
    run.checkpoint(folder / "fork.pt", state)


def save_branch_out(run) -> None:
    """Save a branch-out: this exact state, set to finish training on the current pool."""
    st = run.state
    st.forks.append([st.round, run.trainer.step_count, st.pool_size])
    branch = dataclasses.replace(st, pending=False, evals=0, forks=[])
    _fork(run, run.rd.root / "branches" / f"round-{st.round}", branch)
    faults.point("fork.saved")


def save_budget_fork(run, iterations: int) -> None:
    """Save the state the cool-down of the `iterations` budget starts from."""
    folder = run.rd.root / "budgets" / f"iters-{iterations}"
    if (folder / "fork.pt").exists() or (folder / "checkpoint.pt").exists():
        return  # a resumed run passes the same step again
    state = dataclasses.replace(run.state, evals=0, forks=[], losses=list(run.state.losses))
    _fork(run, folder, state)
    faults.point("budget.forked")


def _cached(rd: RunDir) -> dict | None:
    if not check_regular(rd.root / "result.json"):
        return None
    try:
        result = json.loads(read_inside(rd.root, "result.json", 2**20))
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise DeliberateError(f"{rd.root / 'result.json'} is damaged; delete it to redo the branch")
    return result


def _write_result(rd: RunDir, result: dict) -> dict:
    if distributed.is_main():
        with atomic_file(rd.root / "result.json") as f:
            f.write(json.dumps(result).encode())
    return result


def _result(rd: RunDir, size: int, **more) -> dict:
    last = rd.metrics()[-1]
    return {**more, "pool_size": size, "val_acc": last["val_acc"], "test_acc": last["test_acc"]}


def finish_branch_out(main, k: int, iteration: int, size: int) -> dict:
    """Train the round-k branch-out to the end of the schedule on its frozen pool."""
    rd = RunDir(main.rd.root / "branches" / f"round-{k}")
    if (done := _cached(rd)) is not None:
        return done
    run = main.branch(rd, limit=size, tag=f"branch {k}")
    fork = rd.root / "fork.pt"
    run.restore(rd.load_checkpoint(check=run.load) or rd.load_checkpoint(fork, check=run.load))
    faults.point("branch.started")
    run.loop(grow=False)
    faults.point("branch.finished")
    return _write_result(rd, _result(rd, size, round=k, forked_at=iteration))


def finish_budget(main, iterations: int) -> dict:
    """Cool one budget branch of `main` down from its fork to `iterations`."""
    rd = RunDir(main.rd.root / "budgets" / f"iters-{iterations}")
    if (done := _cached(rd)) is not None:
        return done
    run = main.branch(rd, tag=f"{main.tag} {iterations} it", iterations=iterations)
    ckpt = rd.load_checkpoint(check=run.load) or rd.load_checkpoint(rd.root / "fork.pt",
                                                                     check=run.load)  # fmt: skip
    if ckpt is None:
        raise DeliberateError(f"{rd.root}: its fork.pt is missing; delete the folder and re-run")
    run.restore(ckpt)
    run.limit = size = run.state.pool_size  # the pool as it was when the budget forked
    run.loop(grow=False)
    return _write_result(rd, _result(rd, size, iterations=iterations))


def budget_results(run) -> list[dict]:
    """Every budget of `run`, shortest first, its own full-length result last."""
    own = _result(run.rd, run.state.pool_size, iterations=run.rd.metrics()[-1]["iteration"])
    return [*(finish_budget(run, b) for b in sorted(run.cfg.learner.budgets)), own]


def finish_prefix(main, n: int) -> dict:
    """A fresh static learner on D_0's first n images (= the n-image pool), with its budgets."""
    rd = RunDir(main.rd.root / "prefixes" / f"n-{n}")
    if (done := _cached(rd)) is not None:
        return done
    if distributed.is_main():
        rd.root.mkdir(parents=True, exist_ok=True)
    run = main.branch(rd, limit=n, tag=f"static {n}")
    # From scratch, its images are in the pool already: it stands for a prefix's generation.
    share = n / main.state.pool_size
    generation = ("denoiser_evals", "images_generated", "seconds_generate")
    ledger = {k: v * share if k in generation else 0 for k, v in main.state.ledger.items()}
    run.restore(rd.load_checkpoint(check=run.load), round=0, pending=False, pool_size=n,
                ledger=ledger)  # fmt: skip
    run.loop(grow=False)
    budgets = budget_results(run)
    return _write_result(rd, {**budgets[-1], "budgets": budgets})
