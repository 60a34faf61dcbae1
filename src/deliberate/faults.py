"""Reliability plumbing: named kill points, graceful SIGINT/SIGTERM, and a free-space check.

Kill points. `point(name)` marks a moment where a crash must lose nothing. With the environment
variable `DELIBERATE_FAULT=name[:n]` set, the process SIGKILLs itself the n-th time (default 1st)
it reaches that point: no `finally`, no flush, exactly what a preempted machine leaves behind.
`name:n:TERM` (or INT) sends that signal instead, to test graceful stops at a precise moment;
`name:n:INT:2` sends it twice (an impatient user: the second must stop at once).
Unset (always, outside tests), `point` is two comparisons. `POINTS` lists every placed name;
tests/test_faults.py kills a real run at the first and the last hit of each (counted by
`arm(count=True)` in the uninterrupted run) and checks the re-run finishes identically.

Signals. Inside `graceful_stop()`, SIGINT and SIGTERM only set a flag; the run polls
`stop_requested()` at safe points (after a training step, between sampling batches), writes its
checkpoint and raises `Interrupted`, which the CLI prints as one line and exits 128 + signal
(130, 143). A second signal stops at once (every file is written atomically, so that is safe too).

Free space. `ensure_free_space(path, need)` refuses to start writing `need` bytes (plus a reserve,
`DELIBERATE_RESERVE_BYTES`, default 64 MiB) where the disk has less free.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from deliberate.errors import DeliberateError

FAULT_ENV = "DELIBERATE_FAULT"
RESERVE_ENV = "DELIBERATE_RESERVE_BYTES"
DEFAULT_RESERVE = 64 * 2**20

# Every kill point placed in the code, in the order a run meets them (docs/reliability.md).
POINTS = (
    "run.claimed",  # config.yaml written, nothing else
    "config.tmp_written",  # config.yaml's temp file complete, not yet renamed
    "pool.created",  # empty pool on disk
    "cache.linked",  # round 0's cached shards hard-linked into pool/staging, none committed
    "generate.batch",  # before a sampling batch
    "generate.sampled",  # a batch sampled, not yet in the pool
    "pool.shard_tmp_written",  # shard temp file complete, not renamed (invisible)
    "pool.shard_renamed",  # shard visible, its manifest rows not yet written
    "pool.manifest_torn",  # half of a shard's manifest rows written
    "pool.manifest_written",  # shard and rows complete
    "pool.staged",  # a shard complete in staging/, not yet committed into the pool
    "pool.append_tmp_written",  # Pool.append (prune, copies): shard temp file complete
    "pool.append_renamed",  # Pool.append: shard visible, its rows not yet written
    "pool.append_manifest_torn",  # Pool.append: half of the shard's rows written
    "pool.append_manifest_written",  # Pool.append: shard and rows complete
    "pool.repair_torn",  # opening a pool: half of the rows it re-derives written
    "cache.entry_written",  # a round-0 cache entry complete in its temp folder, not renamed
    "candidates.sampled",  # every candidate of an oversampled round on disk, none chosen yet
    "candidates.removing",  # the chosen in the pool, the candidates' folder renamed, not deleted
    "round.generated",  # every image of a round in the pool, loop state not yet saved
    "checkpoint.torn",  # half of a checkpoint's temp file written
    "checkpoint.tmp_written",  # checkpoint temp file complete, not renamed
    "checkpoint.renamed",  # new checkpoint in place
    "train.step",  # after an optimiser step
    "eval.done",  # evaluated, metrics row not yet written
    "metrics.torn",  # half a metrics row written
    "metrics.appended",  # metrics row written, checkpoint not yet
    "round.decided",  # a round decided (patience), not yet checkpointed
    "fork.saved",  # a branch-out's fork.pt written, main checkpoint not yet
    "branch.started",  # a branch-out about to train from its fork
    "branch.finished",  # a branch-out trained, result.json not yet written
    "budget.forked",  # a budget branch's fork.pt written, the trunk goes on
    "report.started",  # training done, report not yet written
    "report.written",  # report written, summary not yet printed
)

_target: tuple[str, int, int, int] | None = None
_hits = 0
_counts: Counter[str] | None = None


def arm(spec: str | None = None, count: bool = False) -> None:
    """Read `name[:n[:SIGNAL[:times]]]` from `spec` (default: $DELIBERATE_FAULT); reset hits.
    With `count`, every point's hits are counted too (`hit_counts`)."""
    global _target, _hits, _counts
    spec = os.environ.get(FAULT_ENV, "") if spec is None else spec
    _hits = 0
    _counts = Counter() if count else None
    if not spec:
        _target = None
        return
    name, n, sig, times, *_ = [*spec.split(":"), "", "", ""]
    try:
        _target = (name, int(n or 1), signal.Signals[f"SIG{sig or 'KILL'}"], int(times or 1))
    except (ValueError, KeyError):
        _target = None
        raise DeliberateError(f"${FAULT_ENV}={spec!r} is not NAME[:N[:SIGNAL[:TIMES]]]") from None


def point(name: str) -> None:
    """A kill point: signal this process here if it is the armed one and its turn has come."""
    global _hits
    if _counts is not None:
        _counts[name] += 1
    if _target is None or _target[0] != name:
        return
    _hits += 1
    if _hits == _target[1]:
        for _ in range(_target[3]):
            os.kill(os.getpid(), _target[2])


def hit_counts() -> dict[str, int]:
    """How often each point was reached since `arm(count=True)` (empty when not counting)."""
    return dict(_counts or {})


try:
    arm()
except DeliberateError as e:  # a test knob: warn, never stop a real run over it
    print(f"deliberate: warning: {e}; no fault armed", file=sys.stderr)


class Interrupted(Exception):
    """The run stopped at a safe point after SIGINT/SIGTERM; `exit_code` is 128 + signal."""

    def __init__(self, signum: int, resume: str, at_once: bool = False):
        name = signal.Signals(signum).name
        what = (f"stopped at once by a second {name}; everything written so far is kept (a "
                "half-written file is discarded)" if at_once else
                f"stopped by {name} at a safe point, all work so far saved")  # fmt: skip
        super().__init__(f"{what}; {resume}")
        self.exit_code = 128 + signum


_requested: int | None = None
RESUME = "re-run the same command to resume"  # what the one-line stop message advises


def stop_requested() -> int | None:
    """The signal number received inside `graceful_stop`, or None."""
    return _requested


def raise_if_stopped() -> None:
    """At a safe point with nothing left to save: stop here if SIGINT/SIGTERM arrived."""
    if _requested is not None:
        raise Interrupted(_requested, RESUME)


def _on_signal(signum, frame) -> None:
    global _requested
    if _requested is not None:  # impatient: a second signal stops right here
        raise Interrupted(signum, RESUME, at_once=True)
    _requested = signum


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into a polled flag for the duration (main thread only)."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested = None
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        _requested = None


def ensure_free_space(path: str | Path, need: int, what: str) -> None:
    """Refuse (one line) when the disk holding `path` has less than `need` bytes + the reserve."""
    raw = os.environ.get(RESERVE_ENV, "")
    try:
        reserve = int(raw) if raw else DEFAULT_RESERVE
    except ValueError:
        reserve = -1
    if reserve < 0:  # a negative reserve would switch the check off
        raise DeliberateError(f"${RESERVE_ENV}={raw!r} must be a number of bytes >= 0") from None
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need + reserve:
        mib = lambda b: f"{b / 2**20:,.0f} MiB"  # noqa: E731
        raise DeliberateError(
            f"only {mib(free)} free on the disk of {probe}, but {what} needs about "
            f"{mib(need)} plus a {mib(reserve)} reserve (${RESERVE_ENV}); free space or "
            "choose another --out, then re-run the same command"
        )
