"""A full disk for real (issue 14, item 4): `generate` on a tiny tmpfs that fills partway.

The free-space pre-check estimates ~1.8 KiB per 28x28 image; with one image per shard each shard
takes a whole 4 KiB page of tmpfs, so a request the pre-check lets through fills the disk midway.
The kernel's ENOSPC must end the command with one line and exit 2, leave a pool that opens and
verifies, and re-running with more space must complete the request with the images a run that
never ran out of space makes. Needs root (mount); skipped where the sandbox refuses the mount.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from deliberate.cli import main
from deliberate.data.pool import Pool
from tests.helpers import cli_args, fork_run, make_generator, needs_data, tiny_backend
from tests.test_faults import assert_same_result

PER_CLASS = 6  # 60 images: ~106 KiB by the estimate, ~250 KiB on tmpfs at one image per shard


def mount_tmpfs(folder: Path, size: str) -> None:
    """Mount a tmpfs of `size` at folder, or skip the test with the reason it was refused."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (not root, or a sandbox): {done.stderr.strip()}")


def generate(generator: Path, out: Path) -> list[str]:
    return ["generate", "--generator", str(generator), "--per-class", str(PER_CLASS), "--out",
            str(out), "--steps", "1", "--batch-size", "1", "--quiet"]  # fmt: skip


def test_a_full_disk_during_generate_is_one_line_and_loses_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DELIBERATE_RESERVE_BYTES", "0")  # let the pre-check pass on a tiny disk
    gen = tmp_path / "gen"
    tiny_backend(seed=1).save(gen)
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "112k")
    try:
        pool_dir = disk / "pool"
        code = main(generate(gen, pool_dir))
        _, err = capsys.readouterr()
        assert code == 2, err
        assert err.startswith("deliberate: error: the disk of ") and err.count("\n") == 1, err
        assert "No space left on device" in err and str(pool_dir) in err and "re-run" in err
        pool = Pool(pool_dir)
        partial = pool.verify()  # opens, every shard whole and agreeing with the manifest
        assert 0 < partial < 10 * PER_CLASS, partial
        print(f"full after {partial} images")
        assert not list(pool_dir.rglob(".*.tmp"))
        subprocess.run(["mount", "-o", "remount,size=2m", str(disk)], check=True)
        assert main(generate(gen, pool_dir)) == 0, capsys.readouterr().err
        resumed = Pool(pool_dir)
        assert resumed.verify() == 10 * PER_CLASS
        assert main(generate(gen, tmp_path / "reference")) == 0  # never out of space
        want = Pool(tmp_path / "reference").load_all()
        got = resumed.load_all()
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@needs_data
def test_a_full_disk_during_run_is_one_line_and_the_rerun_is_identical(tmp_path, tmp_path_factory,
                                                                      monkeypatch):  # fmt: skip
    """`deliberate run` on an 8 MiB tmpfs: round 0 and the first 4.7 MB checkpoint fit, a later
    checkpoint (written beside the old one, then renamed) does not. One line, exit 2, the run
    folder intact; with room again the same command finishes with the reference's bytes."""
    monkeypatch.setenv("DELIBERATE_RESERVE_BYTES", "0")  # the pre-check passes on a tiny disk
    gen = make_generator(tmp_path_factory)
    ref = tmp_path / "ref"
    assert fork_run(cli_args(ref, gen)) == 0, ref.with_suffix(".err").read_text()
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "8m")
    try:
        out, log = disk / "run", tmp_path / "run.log"
        assert fork_run(cli_args(out, gen), log=log) == 2, log.with_suffix(".err").read_text()
        err = log.with_suffix(".err").read_text()
        assert err.startswith(f"deliberate: error: the disk of {out} is full") and \
            err.count("\n") == 1 and "re-run the same command" in err, err  # fmt: skip
        assert Pool(out / "pool").verify() == len(Pool(out / "pool")) > 0
        assert not list(out.rglob(".*.tmp"))  # no half-written file left to fill the disk
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert fork_run(cli_args(out, gen), log=log) == 0, log.with_suffix(".err").read_text()
        assert_same_result(ref, out)
    finally:
        subprocess.run(["umount", str(disk)], check=True)

