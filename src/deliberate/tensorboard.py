"""An optional TensorBoard view of a run, fed from the same rows as `metrics.jsonl`.

`deliberate run CONFIG --out DIR --tensorboard TB_DIR` (or `run_practice(..., tensorboard=)`)
writes every metrics row's numbers as scalars at its iteration: accuracy, loss, learning rate,
pool size, round, the last round's entropy and the compute ledger. `metrics.jsonl` stays the
record; the event files are a live view of a long run (`tensorboard --logdir TB_DIR`). A resumed
run purges the events past its checkpoint, so the replayed rows are not shown twice.
"""

from __future__ import annotations

import math
from pathlib import Path

from deliberate.errors import DeliberateError


def writer_class():
    """torch's SummaryWriter, or one line saying how to install what it needs (checked before
    a run writes anything)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's writer needs the tensorboard package
        raise DeliberateError(
            "--tensorboard needs the tensorboard package: pip install 'deliberate[tensorboard]'"
        ) from None
    return SummaryWriter


class TensorBoardSink:
    """Scalars of each metrics row under `<tag>/<key>`, at step = the row's iteration."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        SummaryWriter = writer_class()  # noqa: N806 (a class)
        try:
            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step or None)
        except OSError as e:
            raise DeliberateError(
                f"cannot write TensorBoard events to {log_dir}: {e.strerror}; pick another folder"
            ) from None

    def add(self, row: dict, tag: str = "train") -> None:
        """Log the row's finite numbers (booleans as 0/1); strings and None are skipped."""
        step = int(row["iteration"])
        for key, value in row.items():
            if key == "iteration" or isinstance(value, str) or value is None:
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(f"{tag}/{key}", float(value), step)
        self.writer.flush()  # a live view: visible as soon as the row is

    def close(self) -> None:
        self.writer.close()
