"""`deliberate run --tensorboard DIR`: the metrics rows as TensorBoard scalars, also after a kill."""

from __future__ import annotations

import json
import signal

import pytest

from tests.helpers import cli_args, fork_run, make_generator, needs_data

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """Overrides conftest's: a "generator.path=..,data_dir=.." pair for `cli_args`."""
    return make_generator(tmp_path_factory)


def scalars(tb_dir, tag: str) -> list[tuple[int, float]]:
    acc = event_accumulator.EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@needs_data
def test_scalars_equal_the_metrics_rows_even_after_a_kill(generator, tmp_path):
    out, tb = tmp_path / "run", tmp_path / "tb"
    args = [*cli_args(out, generator), "--tensorboard", str(tb)]
    # Killed after the second row (step 20), before its checkpoint: step 20 is logged again.
    assert fork_run(args, "metrics.appended:2") == -signal.SIGKILL
    assert fork_run(args) == 0, (tmp_path / "run.err").read_text()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("val_acc", "train_loss", "pool_size", "denoiser_evals"):
        want = [(r["iteration"], float(r[key])) for r in rows]
        got = scalars(tb, f"train/{key}")
        assert [s for s, _ in got] == [s for s, _ in want], key  # each step once
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), key


def test_a_missing_tensorboard_dir_parent_is_one_line(generator, tmp_path, capsys):
    from deliberate.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = [*cli_args(tmp_path / "run", generator), "--tensorboard", str(blocker / "tb")]
    assert main(argv) == 2
    assert "TensorBoard" in capsys.readouterr().err
