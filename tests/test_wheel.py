"""The package works from a wheel installed outside the checkout: presets, demo, a tiny run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import has_data

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, unpacked into a scratch site folder (its deps are
    this environment's), and a working folder far from the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if build.returncode:
        pytest.fail(f"pip wheel failed: {build.stderr[-2000:]}")
    (wheel,) = (root / "dist").glob("deliberate-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(root / "site"), str(wheel)], check=True, timeout=600)  # fmt: skip
    (root / "work").mkdir()
    return root


def deliberate(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root / "site"), "OMP_NUM_THREADS": "1"}
    code = "import sys, deliberate; print('FROM', deliberate.__file__, file=sys.stderr); " \
           "from deliberate.cli import main; sys.exit(main(sys.argv[1:]))"  # fmt: skip
    return subprocess.run([sys.executable, "-c", code, *args], cwd=root / "work", env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def test_wheel_ships_the_presets_and_runs_outside_the_checkout(installed):
    out = deliberate(installed, "presets")
    assert out.returncode == 0, out.stderr
    assert f"FROM {installed / 'site'}" in out.stderr  # the wheel, not the checkout
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
    assert {"fmnist/dp", "fmnist/demo", "fmnist/tiny", "imagenet100/dp"} <= listed
    assert deliberate(installed, "demo", "--help").returncode == 0
    bad = deliberate(installed, "run", "fmnist/nope", "--out", "x")
    assert bad.returncode == 2 and "no such file or preset" in bad.stderr
    assert not (installed / "work" / "x").exists()


@pytest.mark.skipif(not has_data(), reason="real Fashion-MNIST files not installed")
def test_a_tiny_preset_runs_from_the_wheel(installed):
    sets = ["learner.iterations=20", "practice.initial=40", "practice.per_round=20",
            "practice.max_images=60", "generator.batch_size=20"]  # fmt: skip
    args = ["run", "fmnist/tiny", "--out", "runs/tiny", "--quiet", *(f"--set={s}" for s in sets)]
    out = deliberate(installed, *args)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((installed / "work" / "runs" / "tiny" / "summary.json").read_text())
    assert summary["iterations"] == 20 and 40 <= summary["pool_size"] <= 60
