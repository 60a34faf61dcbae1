"""Theorem 1 and Corollary 1 of the DP paper (ICML 2025, §4, App. A–C); the Monte Carlo check of
them is `deliberate.theory.simulate`.

Setting (SPEC §6.1): x ~ N(0, I_d), y = sign(w_0ᵀx); a pool of n pairs is pruned by keeping x_i
when q(x_iᵀw_s) = 1, a ridge regression on the ±1 labels is fit to the kept pairs, and the test
error is P(sign(xᵀŵ) ≠ y). As d, n → ∞ with d/n → ϕ the error depends only on λ, ϕ, p, ρ and
the selection scalars γ, β, β̃ (Eq. 15). Everything here broadcasts over NumPy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from deliberate.errors import DeliberateError

KEEP_HARD = "keep-hard"
KEEP_EASY = "keep-easy"
STRATEGIES = (KEEP_HARD, KEEP_EASY)

_PHI0 = 1.0 / np.sqrt(2.0 * np.pi)  # φ(0), the standard normal pdf at 0
_SQRT2 = np.sqrt(2.0)


# --------------------------------------------------------------------------------------------
# Parameter checks: one-line DeliberateError naming the parameter, its value and the range.


def _check(name: str, value, lo: float, hi: float, lo_open: bool, hi_open: bool) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    bad = ~np.isfinite(arr) | (arr < lo) | (arr > hi)
    bad |= (arr == lo) if lo_open else False
    bad |= (arr == hi) if hi_open else False
    if np.any(bad):
        v = arr[bad].flat[0] if arr.ndim else float(arr)
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise DeliberateError(f"{name} = {v:g} is out of range: {name} must lie in {interval}")
    return arr


def check_params(*, d=None, n=None, lam=None, rho=None, p=None, strategy=None) -> None:
    """Validate whichever of the model's parameters are given (SPEC §6.1 ranges)."""
    if d is not None:
        _check("d", d, 0.0, np.inf, lo_open=True, hi_open=True)
    if n is not None:
        _check("n", n, 0.0, np.inf, lo_open=True, hi_open=True)
    if lam is not None:
        _check("lam", lam, 0.0, np.inf, lo_open=False, hi_open=True)
    if rho is not None:
        _check("rho", rho, 0.0, 1.0, lo_open=False, hi_open=False)
    if p is not None:
        _check("p", p, 0.0, 1.0, lo_open=True, hi_open=False)
    if strategy is not None and strategy not in STRATEGIES:
        raise DeliberateError(
            f"strategy = {strategy!r} is unknown: use one of {', '.join(STRATEGIES)}"
        )


# --------------------------------------------------------------------------------------------
# Selection strategies [ICML §4.2.1, App. A.2, Lemmas 1–2; SPEC §6.6].


def threshold(p, strategy: str) -> np.ndarray:
    """ξ such that a fraction p is kept: KH keeps |t| ≤ ξ (p = erf(ξ/√2)), KE keeps |t| > ξ."""
    check_params(strategy=strategy)
    p = np.asarray(p, dtype=float)
    return _SQRT2 * (special.erfinv(p) if strategy == KEEP_HARD else special.erfcinv(p))


@dataclass(frozen=True)
class SelectionScalars:
    """The threshold ξ on |xᵀw_s| and γ = E[q(G)G²], β = 2E[q(G)φ(τG)], β̃ = 2E[q(G)Φ(τG)G] (Eq. 15)."""

    xi: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    beta_tilde: np.ndarray


def selection_scalars(p, rho, strategy: str) -> SelectionScalars:
    """Closed forms of γ, β, β̃ for keep-hard / keep-easy (Lemmas 1–2, SPEC §6.6), any ρ ∈ [0, 1].

    γ: E[G² 1(G² ≤ ξ²)] = P(χ²₃ ≤ ξ²), i.e. a regularised incomplete gamma (the paper only defines
    it). β, β̃: Lemma 1 (KH) and Lemma 2 (KE) with α = ξ, ε₁ = P(|G| ≶ ξ/√(1−ρ²)),
    ε₂ = 2Φ(τξ) − 1. At ρ = 1 (τ = ∞) they reduce to β = 0, β̃ = E[q(G)|G|] (SPEC §6.2).
    """
    p, rho = np.broadcast_arrays(np.asarray(p, dtype=float), np.asarray(rho, dtype=float))
    hard = strategy == KEEP_HARD
    xi = threshold(p, strategy)
    half_xi2 = 0.5 * xi * xi
    gamma = special.gammainc(1.5, half_xi2) if hard else special.gammaincc(1.5, half_xi2)
    pdf_xi = _PHI0 * np.exp(-half_xi2)  # φ(ξ); 0 at ξ = ∞ (KH with p = 1)

    s = np.sqrt(np.clip(1.0 - rho * rho, 0.0, None))  # √(1−ρ²)
    aligned = s == 0.0  # ρ = 1: selection along the teacher
    s_safe = np.where(aligned, 1.0, s)
    z1 = xi / (s_safe * _SQRT2)
    eps1 = special.erf(z1) if hard else special.erfc(z1)
    # τξ with τ = ρ/√(1−ρ²); 0·∞ (ρ = 0, ξ = ∞) is 0, and then φ(ξ) = 0 anyway.
    with np.errstate(invalid="ignore"):
        tau_xi = np.where(np.isinf(xi), np.where(rho > 0, np.inf, 0.0), (rho / s_safe) * xi)
    eps2 = special.erf(tau_xi / _SQRT2)
    sign = -1.0 if hard else 1.0
    beta = np.where(aligned, 0.0, 2.0 * _PHI0 * s * eps1)
    beta_tilde_rho1 = 2.0 * (_PHI0 - pdf_xi) if hard else 2.0 * pdf_xi  # E[q(G)|G|]
    beta_tilde = np.where(
        aligned, beta_tilde_rho1, 2.0 * (rho * _PHI0 * eps1 + sign * pdf_xi * eps2)
    )
    return SelectionScalars(xi=xi, gamma=gamma, beta=beta, beta_tilde=beta_tilde)


# --------------------------------------------------------------------------------------------
# Spectral functions [ICML Eqs. 16–17, Lemma 3, Cor. 2; SPEC §6.3, errata 3].


@dataclass(frozen=True)
class Spectral:
    """m, m̃ and their z-derivatives at z = −λ: R ≃ mΠ⊥ + m̃Π and R² ≃ m′Π⊥ + m̃′Π (Cor. 2)."""

    m: np.ndarray
    dm: np.ndarray
    m_tilde: np.ndarray
    dm_tilde: np.ndarray


def spectral(lam, phi, p, gamma) -> Spectral:
    """Eq. 16 via t(z) = z + 1/m, the positive root of t² − (p − ϕ + z)t + pz = 0; Eq. 17 for m̃.

    Derivatives by implicit differentiation (SPEC errata 3; Lemma 6's m′ is wrong):
    t′ = (t − p)/(2t − (p − ϕ + z)), m′ = (1 − t′)m², m̃′ = m̃²(1 + γϕm′/(1 + ϕm)²) (Lemma 6).
    Both roots of the quadratic are written without cancellation, so tiny λ is accurate.
    """
    lam, phi, p, gamma = (np.asarray(a, dtype=float) for a in (lam, phi, p, gamma))
    b = p - phi - lam  # p − ϕ + z
    sq = np.sqrt(b * b + 4.0 * p * lam)  # √((p − ϕ − z)² − 4ϕz) = 2t − (p − ϕ + z)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(b >= 0, 0.5 * (b + sq), 2.0 * p * lam / (sq - b))
        m = 1.0 / (t + lam)
        dt = (t - p) / sq
        dm = (1.0 - dt) * m * m
        s = gamma / (1.0 + phi * m)  # s(z) = γ/(1 + ϕm)
        m_tilde = 1.0 / (s + lam)
        dm_tilde = m_tilde**2 * (1.0 + gamma * phi * dm / (1.0 + phi * m) ** 2)
    return Spectral(m=m, dm=dm, m_tilde=m_tilde, dm_tilde=dm_tilde)


# --------------------------------------------------------------------------------------------
# Theorem 1 and Corollary 1 [ICML §4.2, App. A.5, B, C.2; SPEC §6.4–6.5].


def _arccos_error(a, b) -> np.ndarray:
    """E = arccos(|a|/√b)/π, the exact error of a Gaussian linear classifier (Eq. 50)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.clip(np.abs(a) / np.sqrt(b), 0.0, 1.0)
    return np.arccos(cos) / np.pi


def theorem1(phi, lam, p, rho, strategy: str, *, r_form: str = "proof") -> np.ndarray:
    """Theorem 1 (ICML arccos form): E_test → arccos(|m_0|/√ν_0)/π at z = −λ, λ > 0.

    m_0 = ωm + ω̃m̃ with ω = √(1−ρ²)β, ω̃ = ρβ̃;
    ν_0 = pϕm′ + r′ − 2ϕm′r/(1 + ϕm)                      (errata 2: r is in the numerator);
    r = β²m + β̃²m̃ = cᵀR̄c (proof, App. C.2; errata 1).   r_form="main-text" uses the ICML main
    text's r = ω²m + ω̃²m̃ instead, which is wrong for ρ < 1 and is kept only to show that.
    """
    if r_form not in ("proof", "main-text"):
        raise DeliberateError(f"r_form = {r_form!r} is unknown: use 'proof' or 'main-text'")
    sc = selection_scalars(p, rho, strategy)
    sp = spectral(lam, phi, p, sc.gamma)
    rho = np.asarray(rho, dtype=float)
    omega = np.sqrt(np.clip(1.0 - rho * rho, 0.0, None)) * sc.beta
    omega_tilde = rho * sc.beta_tilde
    m0 = omega * sp.m + omega_tilde * sp.m_tilde
    cb, cbt = (sc.beta, sc.beta_tilde) if r_form == "proof" else (omega, omega_tilde)
    r = cb**2 * sp.m + cbt**2 * sp.m_tilde
    dr = cb**2 * sp.dm + cbt**2 * sp.dm_tilde
    nu0 = p * phi * sp.dm + dr - 2.0 * phi * sp.dm * r / (1.0 + phi * sp.m)
    return _arccos_error(m0, nu0)


def corollary1(phi, p, rho, strategy: str) -> np.ndarray:
    """Corollary 1 (λ → 0⁺, ICML version; SPEC §6.5): E_test → arccos(|a|/√b)/π.

    (A) ϕ < p: a = (ω + ω̃p/γ)/(p − ϕ), b = [p²ϕ + r′₀ − 2ϕr₀]/(p − ϕ)³,
        r₀ = β² + β̃²p/γ, r′₀ = p(β² + β̃²((p − ϕ)p/γ² + ϕ/γ)).
    (B) ϕ > p: a = (ω + ω̃/c₁)c₀, b = (pϕ − r₀)c₀, c₀ = 1 − p/ϕ, c₁ = 1 − (p − γ)/ϕ,
        r₀ = β² + β̃²/c₁.
    At the interpolation threshold ϕ = p the min-norm interpolator's norm diverges faster than its
    alignment (m_0² ~ λ⁻¹, ν_0 ~ λ^(−3/2)), so the limit is 1/2; both branches tend to it.
    """
    phi, p, rho = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (phi, p, rho)))
    sc = selection_scalars(p, rho, strategy)
    g, bt2, b2 = sc.gamma, sc.beta_tilde**2, sc.beta**2
    omega = np.sqrt(np.clip(1.0 - rho * rho, 0.0, None)) * sc.beta
    omega_tilde = rho * sc.beta_tilde
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = p - phi
        r0_a = b2 + bt2 * p / g
        dr0_a = p * (b2 + bt2 * (gap * p / g**2 + phi / g))
        a_a = (omega + omega_tilde * p / g) / gap
        b_a = (p * p * phi + dr0_a - 2.0 * phi * r0_a) / gap**3
        c0 = 1.0 - p / phi
        c1 = 1.0 - (p - g) / phi
        a_b = (omega + omega_tilde / c1) * c0
        b_b = (p * phi - (b2 + bt2 / c1)) * c0
        err = np.where(gap > 0, _arccos_error(a_a, b_a), _arccos_error(a_b, b_b))
    return np.where(gap == 0, 0.5, err)


def predicted_error(d, n, lam, rho, p, strategy: str) -> np.ndarray:
    """Validated entry point: Theorem 1 with ϕ = d/n, or Corollary 1 where λ = 0."""
    check_params(d=d, n=n, lam=lam, rho=rho, p=p, strategy=strategy)
    phi = np.asarray(d, dtype=float) / np.asarray(n, dtype=float)
    lam = np.asarray(lam, dtype=float)
    lam_safe = np.where(lam > 0, lam, 1.0)
    return np.where(
        lam > 0, theorem1(phi, lam_safe, p, rho, strategy), corollary1(phi, p, rho, strategy)
    )
