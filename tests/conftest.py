"""Shared test setup: one torch thread.

On a 2-core machine, two processes that each spin two OpenMP threads (pytest plus a subprocess
under test) slow each other down by ~50x; one thread each keeps the suite fast and predictable.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses started by tests

import torch  # noqa: E402

torch.set_num_threads(1)

# Shared fixtures. Helpers and constants live in tests/helpers.py; test modules import those
# from there, and never import from one another.

import pytest  # noqa: E402

from tests import helpers  # noqa: E402


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """The shipped generator's folder when it loads, else a tiny random one's (a str path).

    test_faults.py and test_validation.py override it with their own: a
    "generator.path=..,data_dir=.." pair for `deliberate run --set`."""
    return helpers.shipped_or_tiny_generator(tmp_path_factory)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    """A tiny Stable Diffusion folder in diffusers layout (needs transformers)."""
    return helpers.write_tiny_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory):
    """A tiny DiT folder in diffusers layout."""
    return helpers.write_tiny_dit(tmp_path_factory.mktemp("dit"))
