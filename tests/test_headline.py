"""benchmarks/headline.py: budgets chosen on validation, both headline ratios, seed by seed."""

import pytest

from tests.helpers import benchmark_module

headline = benchmark_module("headline")


def grid_of(rows):
    """{method: {size: {iterations: {seed: (val, test, pool)}}}} from (method, size, its, seed,
    val, test); the pool is the size unless a row says otherwise (a 7th value)."""
    grid = {}
    for m, n, its, seed, val, test, *pool in rows:
        cell = grid.setdefault(m, {}).setdefault(n, {}).setdefault(its, {})
        cell[seed] = (val, test, pool[0] if pool else n)
    return grid


def test_the_budget_is_chosen_on_validation_never_on_test():
    by_budget = {1000: {0: (0.80, 0.90, 1), 1: (0.80, 0.90, 1)},
                 4000: {0: (0.85, 0.70, 1), 1: (0.84, 0.71, 1)}}  # fmt: skip
    assert headline.choose(by_budget) == (4000, [0, 1])  # best val, though its test is worse
    tie = {1000: {0: (0.8, 0.1, 1)}, 2000: {0: (0.8, 0.9, 1)}}
    assert headline.choose(tie)[0] == 1000  # a tie goes to the cheaper budget


def test_both_ratios_from_the_chosen_budgets():
    rows = []
    for seed in (0, 1):
        rows += [("static", 10_000, 1000, seed, 0.80, 0.80), ("static", 10_000, 4000, seed, 0.81, 0.81),
                 ("static", 40_000, 1000, seed, 0.80, 0.80), ("static", 40_000, 4000, seed, 0.84, 0.84),
                 ("DP", 2_500, 1000, seed, 0.82, 0.82), ("DP", 2_500, 4000, seed, 0.81, 0.85),
                 ("DP", 10_000, 1000, seed, 0.85, 0.86), ("DP", 10_000, 4000, seed, 0.84, 0.88)]  # fmt: skip
    grid = grid_of(rows)
    chosen = {m: {n: headline.choose(grid[m][n]) for n in grid[m]} for m in grid}
    assert chosen["DP"][10_000][0] == 1000 and chosen["static"][40_000][0] == 4000
    r = headline.ratios(grid, chosen)
    assert r["best_static"] == (40_000, 0.84)
    # DP's curve at its chosen budgets: 0.82 at 2.5k, 0.86 at 10k; 0.84 is half-way in log size
    assert r["dp_images_to_best_static"] == pytest.approx(5_000)
    assert r["images_ratio"] == pytest.approx(8.0)
    # DP's best (0.86 at 10k, 1,000 it) is beyond every static budget: not reached
    assert r["dp_best"] == (10_000, 1000, 0.86) and r["iterations_ratio"] is None
    # the other direction: DP's best size per budget (10k at both, on val) is 0.86 already at
    # 1,000 iterations, above static's best (0.84 at 4,000)
    assert r["static_best_iterations"] == 4000 and r["dp_iterations_to_best_static"] == 1000
    assert r["iterations_ratio_at_static_best"] == pytest.approx(4.0)
    assert headline.ratios(grid, chosen, seed=1)["images_ratio"] == pytest.approx(8.0)
    rows += [("static", n, 8000, s, v, v) for n, v in ((10_000, 0.81), (40_000, 0.87)) for s in (0, 1)]
    grid = grid_of(rows)
    chosen = {m: {n: headline.choose(grid[m][n]) for n in grid[m]} for m in grid}
    r = headline.ratios(grid, chosen)
    assert r["best_static"] == (40_000, 0.87) and r["images_ratio"] is None  # DP never gets there
    # static reaches DP's 0.86 between 4k (0.84) and 8k (0.87) iterations: 4000 * 2^(2/3)
    assert r["static_iterations_to_dp_best"] == pytest.approx(4000 * 2 ** (2 / 3))
    assert r["iterations_ratio"] == pytest.approx(4 * 2 ** (2 / 3))
    # DP reaches static's new best (0.87 at 8k) half-way, in log iterations, from 1k (0.86) to 4k (0.88)
    assert r["static_best_iterations"] == 8000
    assert r["dp_iterations_to_best_static"] == pytest.approx(2000)
    assert r["iterations_ratio_at_static_best"] == pytest.approx(4.0)
    # a DP setting whose short budget ended before its last round: the pool at the chosen budget
    rows += [("DP", 40_000, 1000, s, 0.86, 0.86, 32_000) for s in (0, 1)]
    rows += [("DP", 40_000, 4000, s, 0.90, 0.88) for s in (0, 1)]
    grid = grid_of(rows)
    chosen = {m: {n: headline.choose(grid[m][n]) for n in grid[m]} for m in grid}
    r = headline.ratios(grid, chosen)
    assert r["dp_best"] == (40_000, 4000, 0.88) and r["dp_curve"][-1] == (40_000, 0.88)
