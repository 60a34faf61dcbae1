"""Theorem 1 / Corollary 1 (SPEC §6): closed forms, limits, edge cases, simulation, CLI."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from scipy import integrate, stats

from deliberate import theory
from deliberate.cli import theory as theory_cli
from deliberate.errors import DeliberateError
from deliberate.theory.model import KEEP_EASY, KEEP_HARD, STRATEGIES

# ---------------------------------------------------------------------------------------------
# Selection scalars (Eq. 15, Lemmas 1–2)


def _quadrature_scalars(p, rho, strategy):
    """γ, β, β̃ of Eq. 15 by numerical integration against the N(0, 1) density."""
    xi = float(theory.threshold(p, strategy))
    keep = (lambda g: abs(g) <= xi) if strategy == KEEP_HARD else (lambda g: abs(g) > xi)
    if rho < 1:
        tau = rho / np.sqrt(1 - rho**2)
        pdf_tau, cdf_tau = (lambda g: stats.norm.pdf(tau * g)), (lambda g: stats.norm.cdf(tau * g))
    else:
        pdf_tau, cdf_tau = (lambda g: 0.0), (lambda g: float(g > 0))
    breaks = [-xi, 0.0, xi] if np.isfinite(xi) else [0.0]

    def mean(f):
        integrand = lambda g: keep(g) * f(g) * stats.norm.pdf(g)  # noqa: E731
        return integrate.quad(integrand, -12, 12, points=breaks, limit=400, epsabs=1e-13)[0]

    return (
        mean(lambda g: 1.0),
        mean(lambda g: g * g),
        2 * mean(pdf_tau),
        2 * mean(lambda g: cdf_tau(g) * g),
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("p", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("rho", [0.0, 0.6, 0.8, 1.0])
def test_selection_scalars_match_quadrature(strategy, p, rho):
    kept, gamma, beta, beta_tilde = _quadrature_scalars(p, rho, strategy)
    sc = theory.selection_scalars(p, rho, strategy)
    assert kept == pytest.approx(p, abs=1e-9)
    assert float(sc.gamma) == pytest.approx(gamma, abs=1e-9)
    assert float(sc.beta) == pytest.approx(beta, abs=1e-9)
    assert float(sc.beta_tilde) == pytest.approx(beta_tilde, abs=1e-9)


def test_keep_hard_and_keep_easy_split_the_pool():
    # KH(p) and KE(1 − p) partition the pool, and γ, β, β̃ are linear in q.
    p, rho = np.linspace(0.05, 0.95, 7), np.array([0.0, 0.3, 0.8, 0.99, 1.0])[:, None]
    kh, ke = (
        theory.selection_scalars(p, rho, KEEP_HARD),
        theory.selection_scalars(1 - p, rho, KEEP_EASY),
    )
    full = theory.selection_scalars(1.0, rho, KEEP_HARD)
    np.testing.assert_allclose(kh.xi, ke.xi, rtol=1e-12)
    for name in ("gamma", "beta", "beta_tilde"):
        total = getattr(kh, name) + getattr(ke, name)
        np.testing.assert_allclose(
            total, np.broadcast_to(getattr(full, name), total.shape), atol=1e-12
        )
    assert np.all(full.gamma == 1.0)
    np.testing.assert_allclose(full.beta_tilde[:, 0], np.sqrt(2 / np.pi) * rho[:, 0], atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Spectral functions (Eqs. 16–17, errata 3)


@pytest.mark.parametrize("phi,p", [(0.35, 0.8), (1.4, 0.5), (0.5, 0.5), (0.9, 0.2)])
@pytest.mark.parametrize("lam", [1e-6, 0.01, 1.0])
def test_spectral_fixed_point_and_derivatives(phi, p, lam):
    gamma = 0.3
    sp = theory.spectral(lam, phi, p, gamma)
    # Marchenko–Pastur self-consistency: m = 1/(−z + p/(1 + ϕm)) at z = −λ.
    assert sp.m == pytest.approx(1 / (lam + p / (1 + phi * sp.m)), rel=1e-10)
    assert sp.m_tilde == pytest.approx(1 / (lam + gamma / (1 + phi * sp.m)), rel=1e-10)
    # d/dz = −d/dλ; central differences in log λ.
    h = 1e-5 * lam
    up, down = theory.spectral(lam + h, phi, p, gamma), theory.spectral(lam - h, phi, p, gamma)
    assert sp.dm == pytest.approx(-(up.m - down.m) / (2 * h), rel=1e-5)
    assert sp.dm_tilde == pytest.approx(-(up.m_tilde - down.m_tilde) / (2 * h), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Theorem 1 and Corollary 1


def test_reference_values_from_spec():
    # SPEC §6.7: n = 1000, λ = 0.01, ρ = 1, d = 350.
    assert theory.predicted_error(350, 1000, 0.01, 1.0, 0.8, KEEP_HARD) == pytest.approx(
        0.1143, abs=1e-4
    )
    assert theory.predicted_error(350, 1000, 0.01, 1.0, 1.0, KEEP_HARD) == pytest.approx(
        0.1601, abs=1e-4
    )
    # Fig. 3 at m = 1024 and Fig. 5c at m = 1024 (d = 512, ρ = 1, λ = 0.01).
    p = np.array([0.1, 0.5, 0.8, 0.9, 1.0])
    acc = 100 * (1 - theory.predicted_error(512, 1024 / p, 0.01, 1.0, p, KEEP_HARD))
    np.testing.assert_allclose(acc, [64.1, 91.3, 87.2, 84.7, 79.7], atol=0.05)
    ratio = np.array([1, 1.5, 2, 3, 4, 8, 18])
    acc = 100 * (1 - theory.predicted_error(512, 1024 * ratio, 0.01, 1.0, 1 / ratio, KEEP_HARD))
    np.testing.assert_allclose(acc, [79.7, 89.6, 91.3, 90.0, 86.1, 69.2, 55.7], atol=0.05)


def test_main_text_r_is_wrong_only_below_rho_one():
    # Errata 1: r = ω²m + ω̃²m̃ (main text) equals the proof's β²m + β̃²m̃ only at ρ = 1.
    args = (350 / 1000, 0.01, np.array([0.2, 0.5, 1.0]))
    for s in STRATEGIES:
        np.testing.assert_allclose(
            theory.theorem1(*args, 1.0, s, r_form="main-text"), theory.theorem1(*args, 1.0, s)
        )
    proof, main = (
        theory.theorem1(*args, 0.8, KEEP_HARD),
        theory.theorem1(*args, 0.8, KEEP_HARD, r_form="main-text"),
    )
    assert proof[-1] == pytest.approx(0.1601, abs=1e-4)  # p = 1: no selection, ρ is irrelevant
    assert np.max(np.abs(proof - main)) > 0.05


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8, 1.0])
def test_corollary_is_the_small_lambda_limit_of_the_theorem(strategy, rho):
    phi, p = np.meshgrid([0.1, 0.35, 0.7, 1.4, 3.0], [0.05, 0.2, 0.5, 0.8, 1.0])
    away = np.abs(p - phi) > 0.05  # both regimes, away from the threshold ϕ = p
    phi, p = phi[away], p[away]
    assert np.any(phi < p) and np.any(phi > p)
    cor = theory.corollary1(phi, p, rho, strategy)
    gaps = [
        np.max(np.abs(theory.theorem1(phi, lam, p, rho, strategy) - cor))
        for lam in (1e-3, 1e-5, 1e-9)
    ]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-6


def test_corollary_at_and_near_the_interpolation_threshold():
    for s in STRATEGIES:
        assert theory.corollary1(0.5, 0.5, 0.8, s) == 0.5
        near = theory.corollary1(np.array([0.5 - 1e-9, 0.5 + 1e-9]), 0.5, 0.8, s)
        np.testing.assert_allclose(near, 0.5, atol=1e-3)
    assert theory.predicted_error(350, 700, 0.0, 1.0, 0.5, KEEP_HARD) == 0.5  # λ = 0 → Corollary 1


def test_edge_cases():
    # p = 1 keeps everything: strategy and ρ do not matter.
    e = [
        theory.predicted_error(350, 600, 0.05, rho, 1.0, s)
        for s in STRATEGIES
        for rho in (0, 0.5, 1)
    ]
    np.testing.assert_allclose(e, e[0], rtol=1e-12)
    # ρ = 1 is the limit of ρ → 1 (τ = ∞ is special-cased).
    for s in STRATEGIES:
        for p in (0.1, 0.6):
            assert theory.predicted_error(350, 600, 0.01, 1 - 1e-12, p, s) == pytest.approx(
                theory.predicted_error(350, 600, 0.01, 1.0, p, s), abs=1e-6
            )
    # ρ = 0: the selection direction is orthogonal to the teacher, β̃ = 0.
    assert float(theory.selection_scalars(0.3, 0.0, KEEP_HARD).beta_tilde) == 0.0
    # Extreme but valid values stay finite and in [0, 1/2].
    for args in [
        (350, 1000, 0.01, 1.0, 1e-6),
        (1, 10**7, 1e6, 0.3, 0.5),
        (10**5, 2, 1e-12, 0.9, 0.7),
    ]:
        for s in STRATEGIES:
            e = float(theory.predicted_error(*args, s))
            assert 0.0 <= e <= 0.5, (args, s, e)
    # Broadcasting equals element-wise evaluation.
    p = np.array([0.2, 0.5, 1.0])
    np.testing.assert_array_equal(
        theory.predicted_error(350, 600, 0.01, 0.8, p, KEEP_EASY),
        [float(theory.predicted_error(350, 600, 0.01, 0.8, q, KEEP_EASY)) for q in p],
    )


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"p": 0.0}, "p"),
        ({"p": 1.5}, "p"),
        ({"p": float("nan")}, "p"),
        ({"rho": -0.1}, "rho"),
        ({"rho": 1.01}, "rho"),
        ({"lam": -1e-3}, "lam"),
        ({"d": 0}, "d"),
        ({"n": -5}, "n"),
        ({"strategy": "keep-random"}, "strategy"),
    ],
)
def test_invalid_parameters_give_one_line_error(kwargs, name):
    args = {"d": 350, "n": 600, "lam": 0.01, "rho": 0.8, "p": 0.5, "strategy": KEEP_HARD} | kwargs
    with pytest.raises(DeliberateError) as info:
        theory.predicted_error(**args)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{name} = ")
    sim = {"d": 20, "n": 30, "lams": [0.1], "rho": 1.0, "selections": [(KEEP_HARD, 0.5)]}
    sim |= {"lams": [args["lam"]]} if name == "lam" else {}
    sim |= {"selections": [(args["strategy"], args["p"])]} if name in ("p", "strategy") else {}
    sim |= {name: args[name]} if name in ("d", "n", "rho") else {}
    with pytest.raises(DeliberateError):
        theory.simulate(**sim, trials=1)


# ---------------------------------------------------------------------------------------------
# Theory against simulation


def test_theorem_matches_simulation_on_a_sub_grid():
    # ρ < 1 and ρ = 1, both strategies, ϕ > p (n = 250; n = 1000 with p = 0.2) and ϕ < p.
    points = theory.check_grid(
        d=350, ns=(250, 1000), lams=(0.01, 0.1), rhos=(0.8, 1.0), ps=(0.2, 0.5, 1.0), trials=24
    )
    assert len(points) == 2 * 2 * 2 * 3 * 2
    assert {c.d / c.n > c.p for c in points} == {True, False}
    worst = max(points, key=lambda c: c.diff)
    assert worst.diff <= 0.01, worst
    assert max(c.sim_se for c in points) < 0.005


def test_min_norm_simulation_matches_corollary():
    sel = [(KEEP_HARD, 0.8), (KEEP_EASY, 0.2), (KEEP_HARD, 1.0)]  # ϕ = 0.35 < p and ϕ > p
    err = theory.simulate(350, 1000, [0.0], 1.0, sel, trials=8, seed=1).mean(axis=0)[:, 0]
    pred = [float(theory.predicted_error(350, 1000, 0.0, 1.0, p, s)) for s, p in sel]
    np.testing.assert_allclose(err, pred, atol=0.01)


def test_simulation_is_deterministic_per_seed():
    kw = {"lams": [0.1], "rho": 0.8, "selections": [(KEEP_HARD, 0.5)], "trials": 2}
    a, b = theory.simulate(30, 60, seed=3, **kw), theory.simulate(30, 60, seed=3, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, theory.simulate(30, 60, seed=4, **kw))


# ---------------------------------------------------------------------------------------------
# CLI handlers, through a parser built here


def _run(argv):
    parser = argparse.ArgumentParser(prog="deliberate")
    theory_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["theory", *argv])
    return args.func(args)


def test_cli_predict_prints_the_error_last(capsys):
    argv = ["predict", "--d", "350", "--n", "1000", "--lam", "0.01", "--rho", "0.8", "--p", "0.5",
            "--strategy", "keep-easy"]  # fmt: skip
    assert _run(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    expected = theory.predicted_error(350, 1000, 0.01, 0.8, 0.5, KEEP_EASY)
    assert float(last) == pytest.approx(float(expected), abs=1e-6)
    with pytest.raises(DeliberateError, match="rho = 2"):
        _run(["predict", "--rho", "2"])


def test_cli_main_reports_errors_in_one_line(capsys):
    assert theory_cli.main(["theory", "predict", "--lam", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lam = -1" in err


def test_cli_check_exit_codes(capsys):
    argv = ["check", "--d", "40", "--n", "120", "--lam", "0.1", "--rho", "1", "--p", "0.5", "1",
            "--trials", "3"]  # fmt: skip
    assert _run([*argv, "--tol", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert (
        len(out) == 3 + 4
        and out[-1].startswith("max |theory - simulation| = ")
        and "PASS" in out[-1]
    )
    assert _run([*argv, "--tol", "0"]) == 1
    assert "FAIL" in capsys.readouterr().out.strip().splitlines()[-1]


def test_cli_figures_write_pngs(tmp_path, capsys):
    for argv in (
        ["fig3", "--m-max", "2048"],
        ["fig5c", "--m", "512", "1024", "--ratio-max", "6"],
        ["fig7", "--d", "40", "--n", "60", "120", "--trials", "2"],
    ):
        out = tmp_path / f"{argv[0]}.png"
        assert _run([*argv, "--out", str(out)]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert capsys.readouterr().out.strip().endswith(f"wrote {out}")


def test_cli_help_lists_every_subcommand(capsys):
    for sub in ("predict", "check", "fig3", "fig5c", "fig7"):
        with pytest.raises(SystemExit) as info:
            _run([sub, "--help"])
        assert info.value.code == 0
        assert "default" in capsys.readouterr().out
