"""A Monte Carlo check of Theorem 1: ridge on a selected Gaussian pool, its exact test error.

The same setting as `deliberate.theory.model` (SPEC §6.1, §6.7), simulated at finite d and n.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deliberate.errors import DeliberateError
from deliberate.theory.model import (
    KEEP_HARD,
    STRATEGIES,
    check_params,
    predicted_error,
    threshold,
)

# --------------------------------------------------------------------------------------------
# Monte Carlo simulation of the same setting [SPEC §6.7].


def _openblas_thread_setters() -> list[tuple[Callable[[int], object], int]]:
    """(set_num_threads, current thread count) for each OpenBLAS loaded in this process (Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    paths = sorted({line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1]})
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)  # already loaded: this only returns its handle
        except OSError:
            continue
        for name in ("scipy_openblas{}64_", "scipy_openblas{}", "openblas{}64_", "openblas{}"):
            get = getattr(lib, name.format("_get_num_threads"), None)
            set_ = getattr(lib, name.format("_set_num_threads"), None)
            if get is not None and set_ is not None:
                found.append((set_, int(get())))
                break
    return found


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with one OpenBLAS thread (numpy's and scipy's copies); a no-op elsewhere.

    Factorising d ≈ 350 matrices is ~10x slower with two OpenBLAS threads than with one on a busy
    2-core machine, because each thread spin-waits for the other. This is threadpoolctl's trick
    without the dependency: find the loaded OpenBLAS libraries and call their thread setter.
    """
    setters = _openblas_thread_setters()
    for set_, _ in setters:
        set_(1)
    try:
        yield
    finally:
        for set_, threads in setters:
            set_(threads)


def simulate(
    d: int,
    n: int,
    lams: Sequence[float],
    rho: float,
    selections: Sequence[tuple[str, float]],
    *,
    trials: int,
    seed: int = 0,
) -> np.ndarray:
    """Test errors of ridge on a selected pool, shape (trials, len(selections), len(lams)).

    x ~ N(0, I_d), w_0 = e₁, w_s = ρe₁ + √(1−ρ²)e₂, q from `threshold` (the population ξ, so the
    kept count is Binomial(n, p)), ŵ = (XᵀDX/n + λI)⁻¹XᵀDY/n (min-norm solution at λ = 0), and the
    exact error arccos(cos∠(ŵ, w_0))/π (Eq. 50). All selections of one trial share the pool:
    rows are binned by |xᵀw_s| between the distinct thresholds, one Gram matrix per bin, and each
    selection (a union of bins) sums them, so the O(nd²) work is paid once per trial.
    """
    for name, v in (("d", d), ("n", n), ("trials", trials)):
        if int(v) != v or v < 1:
            raise DeliberateError(f"{name} = {v} is out of range: {name} must be an integer >= 1")
    check_params(lam=lams, rho=rho)
    for strategy, p in selections:
        check_params(p=p, strategy=strategy)
    lams = np.asarray(lams, dtype=float)

    xis = np.array([threshold(p, s) for s, p in selections])
    levels = np.unique(xis)  # bin k holds levels[k−1] < |h| ≤ levels[k]; the last bin |h| > max
    idx = np.searchsorted(levels, xis)
    keep = np.zeros((len(selections), len(levels) + 1))  # (S, K + 1) bin membership
    for j, (strategy, _) in enumerate(selections):
        if strategy == KEEP_HARD:
            keep[j, : idx[j] + 1] = 1.0
        else:
            keep[j, idx[j] + 1 :] = 1.0
    keep, which = np.unique(keep, axis=0, return_inverse=True)  # e.g. KH and KE at p = 1
    which = which.reshape(-1)

    rng = np.random.default_rng([seed, d, n, round(rho * 1_000_000)])
    s_perp = np.sqrt(max(1.0 - rho * rho, 0.0))
    eye = np.eye(d)
    errors = np.empty((trials, len(keep), len(lams)))
    with single_threaded_blas():
        for trial in range(trials):
            x = rng.standard_normal((n, d))  # (n, d)
            y = np.where(x[:, 0] >= 0, 1.0, -1.0)
            h = rho * x[:, 0] + s_perp * x[:, 1]  # xᵀw_s
            bins = np.searchsorted(levels, np.abs(h))
            gram = np.zeros((len(levels) + 1, d, d))  # (K + 1, d, d) one Gram per bin
            xty = np.zeros((len(levels) + 1, d))
            for k in np.unique(bins):
                xk = x[bins == k]
                gram[k] = xk.T @ xk
                xty[k] = xk.T @ y[bins == k]
            gram_sel = np.tensordot(keep, gram, axes=1) / n  # (S', d, d)
            b_sel = (keep @ xty / n)[..., None]  # (S', d, 1)
            for li, lam in enumerate(lams):
                if lam > 0:
                    w = np.linalg.solve(gram_sel + lam * eye, b_sel)[..., 0]
                else:  # min-norm least squares, the λ → 0⁺ limit of ridge
                    w = (np.linalg.pinv(gram_sel, hermitian=True) @ b_sel)[..., 0]
                norm = np.linalg.norm(w, axis=-1)  # an empty selection gives ŵ = 0: error 1/2
                cos = w[:, 0] / np.where(norm > 0, norm, 1.0)
                errors[trial, :, li] = np.arccos(np.clip(cos, -1.0, 1.0)) / np.pi
    return errors[:, which]


@dataclass(frozen=True)
class CheckPoint:
    """One point of the theory-vs-simulation grid."""

    d: int
    n: int
    lam: float
    rho: float
    p: float
    strategy: str
    theory: float
    sim_mean: float
    sim_se: float

    @property
    def diff(self) -> float:
        return abs(self.theory - self.sim_mean)


def check_grid(
    *,
    d: int = 350,
    ns: Sequence[int] = (250, 600, 1000),
    lams: Sequence[float] = (0.01, 0.1),
    rhos: Sequence[float] = (0.8, 1.0),
    ps: Sequence[float] = (0.2, 0.5, 0.8, 1.0),
    strategies: Sequence[str] = STRATEGIES,
    trials: int = 40,
    seed: int = 0,
) -> list[CheckPoint]:
    """Theorem 1 (Corollary 1 where λ = 0) against `simulate` on a grid (SPEC §6.7's bar grid)."""
    selections = [(s, float(p)) for s in strategies for p in ps]
    points = []
    for n in ns:
        for rho in rhos:
            err = simulate(d, n, lams, rho, selections, trials=trials, seed=seed)
            mean, se = err.mean(axis=0), err.std(axis=0, ddof=1) / np.sqrt(trials)
            for j, (strategy, p) in enumerate(selections):
                for li, lam in enumerate(lams):
                    theory = float(predicted_error(d, n, lam, rho, p, strategy))
                    points.append(
                        CheckPoint(
                            d, n, float(lam), float(rho), p, strategy,
                            theory, float(mean[j, li]), float(se[j, li]),
                        )
                    )  # fmt: skip
    return points
