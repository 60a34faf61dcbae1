"""Shared test setup: one torch thread.

On a 2-core machine, two processes that each spin two OpenMP threads (pytest plus a subprocess
under test) slow each other down by ~50x; one thread each keeps the suite fast and predictable.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses started by tests

import torch  # noqa: E402

torch.set_num_threads(1)
