"""`deliberate theory ...`: Theorem 1 / Corollary 1 predictions, the simulation check, Figs. 3/5c/7.

`register(subparsers)` adds the `theory` command to the main parser; every leaf sets
`func(args) -> int`. Handlers call `deliberate.theory` / `deliberate.theory.figures` and print;
a `DeliberateError` propagates to the caller, which prints it as one line (exit code 2).
"""

from __future__ import annotations

import argparse
import sys
import time

from deliberate.errors import DeliberateError

_FORMATTER = argparse.ArgumentDefaultsHelpFormatter
_STRATEGIES = ("keep-hard", "keep-easy")  # = theory.STRATEGIES, kept here so --help imports nothing


def cmd_predict(args) -> int:
    from deliberate import theory

    err = float(theory.predicted_error(args.d, args.n, args.lam, args.rho, args.p, args.strategy))
    sc = theory.selection_scalars(args.p, args.rho, args.strategy)
    form = "Theorem 1" if args.lam > 0 else "Corollary 1 (lam = 0: the limit lam -> 0+)"
    print(
        f"setting: d={args.d} n={args.n} phi=d/n={args.d / args.n:.4g} lam={args.lam:g} "
        f"rho={args.rho:g} p={args.p:g} strategy={args.strategy}"
    )
    print(
        f"selection scalars (Eq. 15): xi={float(sc.xi):.6g} gamma={float(sc.gamma):.6g} "
        f"beta={float(sc.beta):.6g} beta_tilde={float(sc.beta_tilde):.6g}"
    )
    print(f"accuracy: {100 * (1 - err):.2f} %")
    print(f"predicted test error ({form}):")
    print(f"{err:.6f}")
    return 0


def cmd_check(args) -> int:
    from deliberate import theory

    if args.trials < 2:
        raise DeliberateError(f"--trials {args.trials} is out of range: need >= 2 for a std error")
    if args.tol < 0:
        raise DeliberateError(f"--tol {args.tol:g} is out of range: it must be >= 0")
    start = time.perf_counter()
    points = theory.check_grid(
        d=args.d,
        ns=args.n,
        lams=args.lam,
        rhos=args.rho,
        ps=args.p,
        strategies=args.strategy,
        trials=args.trials,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start
    print(f"Theorem 1 vs simulation: d={args.d}, {args.trials} trials per point, seed {args.seed}")
    print(f"{'n':>5} {'lam':>7} {'rho':>5} {'p':>5} {'strategy':<10} {'theory':>8} "
          f"{'simulation (± s.e.)':>19} {'|diff|':>7}")  # fmt: skip
    for c in points:
        flag = "  FAIL" if c.diff > args.tol else ""
        print(
            f"{c.n:>5} {c.lam:>7g} {c.rho:>5g} {c.p:>5g} {c.strategy:<10} {c.theory:>8.4f} "
            f"{c.sim_mean:>10.4f} ± {c.sim_se:.4f} {c.diff:>7.4f}{flag}"
        )
    worst = max(points, key=lambda c: c.diff)
    failed = sum(c.diff > args.tol for c in points)
    verdict = "PASS" if failed == 0 else f"FAIL ({failed} points above tol)"
    print(
        f"max |theory - simulation| = {worst.diff:.4f} over {len(points)} points "
        f"(tol {args.tol:g}, worst n={worst.n} lam={worst.lam:g} rho={worst.rho:g} "
        f"p={worst.p:g} {worst.strategy}) in {seconds:.1f} s: {verdict}"
    )
    return 0 if failed == 0 else 1


def cmd_fig3(args) -> int:
    from deliberate.theory import figures as theory_figures

    data = theory_figures.fig3(
        args.out, d=args.d, rho=args.rho, lam=args.lam, keep=args.keep,
        m_min=args.m_min, m_max=args.m_max,
    )  # fmt: skip
    _print_curves(data, "m", at=[2**k for k in range(9, 20) if args.m_min <= 2**k <= args.m_max])
    print(f"wrote {data.path}")
    return 0


def cmd_fig5c(args) -> int:
    from deliberate.theory import figures as theory_figures

    data = theory_figures.fig5c(
        args.out, d=args.d, rho=args.rho, lam=args.lam, sizes=args.m, ratio_max=args.ratio_max
    )
    at = [r for r in (1, 1.5, 2, 3, 4, 6, 8, 12, 18) if r <= args.ratio_max]
    _print_curves(data, "R", at=at)
    print(f"wrote {data.path}")
    return 0


def cmd_fig7(args) -> int:
    from deliberate.theory import figures as theory_figures

    data = theory_figures.fig7(
        args.out, d=args.d, ns=args.n, lams=args.lam, rho=args.rho,
        trials=args.trials, seed=args.seed,
    )  # fmt: skip
    if data.points:
        worst = max(data.points, key=lambda c: c.diff)
        print(
            f"{len(data.points)} simulated points; max |theory - simulation| = {worst.diff:.4f} "
            f"(n={worst.n} lam={worst.lam:g} p={worst.p:g} {worst.strategy})"
        )
    print(f"wrote {data.path}")
    return 0


def _print_curves(data, xname: str, at) -> None:
    """Print each curve's accuracy (%) at the x values `at` (nearest plotted point)."""
    import numpy as np

    idx = [int(np.argmin(np.abs(data.x - a))) for a in at]
    print(f"accuracy (%) at {xname} = " + ", ".join(f"{data.x[i]:.6g}" for i in idx))
    for label, y in data.curves.items():
        print(f"  {label:<18} " + " ".join(f"{y[i]:6.2f}" for i in idx))


def register(subparsers) -> argparse.ArgumentParser:
    """Add `theory` and its subcommands predict / check / fig3 / fig5c / fig7."""
    top = subparsers.add_parser(
        "theory",
        help="the paper's theory (Theorem 1, Corollary 1) checked by simulation; Figs. 3, 5c, 7",
        description="Reproduce the ICML 2025 theory (SPEC §6, with its errata): ridge regression "
        "on a pruned Gaussian pool with a linear teacher, y = sign(w0'x). A fraction p of the pool "
        "is kept by |x'w_s| (keep-hard: near the boundary; keep-easy: far from it), rho = "
        "cos(w_s, w0), phi = d/n.",
    )
    sub = top.add_subparsers(dest="theory_command", metavar="COMMAND", required=True)

    def model_args(p, n: bool = True) -> None:
        p.add_argument("--d", type=int, default=350, help="input dimension")
        if n:
            p.add_argument("--n", type=int, default=1000, help="pool size before selection")
        p.add_argument("--lam", type=float, default=0.01, help="ridge λ >= 0 (0: Corollary 1)")
        p.add_argument("--rho", type=float, default=1.0, help="cos(w_s, w0) in [0, 1]")

    p = sub.add_parser(
        "predict",
        help="predicted test error for one setting (last line: the number)",
        description="Theorem 1 (lam > 0) or Corollary 1 (lam = 0). Prints the selection scalars, "
        "the accuracy, and the predicted test error as the last line.",
        formatter_class=_FORMATTER,
    )
    model_args(p)
    p.add_argument("--p", type=float, default=0.8, help="kept fraction of the pool, in (0, 1]")
    p.add_argument("--strategy", choices=_STRATEGIES, default="keep-hard", help="selection rule")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "check",
        help="theory vs Monte Carlo simulation on a grid; exit 1 if any |diff| > --tol",
        description="Simulate x ~ N(0, I_d), w0 = e1, w_s = rho e1 + sqrt(1-rho^2) e2, selection "
        "by |x'w_s|, closed-form ridge and the exact test error arccos(cos(w, w0))/pi, and compare "
        "with Theorem 1 at every grid point. Defaults: the bar grid of issue 5 / SPEC §6.7.",
        formatter_class=_FORMATTER,
    )
    p.add_argument("--d", type=int, default=350, help="input dimension")
    p.add_argument("--n", type=int, nargs="+", default=[250, 600, 1000], help="pool sizes")
    p.add_argument("--lam", type=float, nargs="+", default=[0.01, 0.1], help="ridge λ values")
    p.add_argument("--rho", type=float, nargs="+", default=[0.8, 1.0], help="rho values")
    p.add_argument(
        "--p", type=float, nargs="+", default=[0.2, 0.5, 0.8, 1.0], help="kept fractions"
    )
    p.add_argument("--strategy", nargs="+", choices=_STRATEGIES, default=list(_STRATEGIES),
                   help="selection rules")  # fmt: skip
    p.add_argument("--trials", type=int, default=40, help="simulated pools per grid point")
    p.add_argument("--seed", type=int, default=0, help="base seed of the simulation")
    p.add_argument("--tol", type=float, default=0.01, help="largest allowed |theory - simulation|")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "fig3",
        help="Fig. 3: accuracy vs selected dataset size, keep top 10/50/80/90 %% and all",
        description="Theorem 1 accuracy against the selected size m = n p (n = m/p) for keep-hard. "
        "The paper gives d = 512 only; rho, lam and the m range are our choices (docs/theory.md).",
        formatter_class=_FORMATTER,
    )
    p.add_argument("--out", default="runs/theory/fig3.png", help="PNG to write")
    model_args(p, n=False)
    p.set_defaults(d=512)
    p.add_argument("--keep", type=float, nargs="+", default=[0.1, 0.5, 0.8, 0.9, 1.0],
                   help="kept fractions p, one curve each (1 = select all)")  # fmt: skip
    p.add_argument("--m-min", type=float, default=2**9, help="smallest selected size")
    p.add_argument("--m-max", type=float, default=2**14, help="largest selected size")
    p.set_defaults(func=cmd_fig3)

    p = sub.add_parser(
        "fig5c",
        help="Fig. 5c: accuracy vs over-sampling ratio R = 1/p at a fixed selected size",
        description="Theorem 1 accuracy against R = n/m for keep-hard at fixed selected sizes m. "
        "The paper gives none of d, m, rho, lam; these defaults are our choices (docs/theory.md).",
        formatter_class=_FORMATTER,
    )
    p.add_argument("--out", default="runs/theory/fig5c.png", help="PNG to write")
    model_args(p, n=False)
    p.set_defaults(d=512)
    p.add_argument(
        "--m", type=float, nargs="+", default=[1024], help="selected sizes, one curve each"
    )
    p.add_argument("--ratio-max", type=float, default=18.0, help="largest over-sampling ratio")
    p.set_defaults(func=cmd_fig5c)

    p = sub.add_parser(
        "fig7",
        help="Fig. 7: error vs p, keep-hard vs keep-easy, theory lines and simulation dots",
        description="Rows: lam (lam < 1e-3 draws Corollary 1, else Theorem 1); columns: n. Dots: "
        "simulation at p = 0.1, ..., 1 with ±1 standard error. rho is not given in the paper; "
        "1 is our choice (docs/theory.md).",
        formatter_class=_FORMATTER,
    )
    p.add_argument("--out", default="runs/theory/fig7.png", help="PNG to write")
    p.add_argument("--d", type=int, default=350, help="input dimension")
    p.add_argument("--n", type=int, nargs="+", default=[250, 600, 1000], help="pool sizes")
    p.add_argument(
        "--lam", type=float, nargs="+", default=[1e-6, 1e-2], help="ridge λ, one row each"
    )
    p.add_argument("--rho", type=float, default=1.0, help="cos(w_s, w0) in [0, 1]")
    p.add_argument("--trials", type=int, default=16, help="simulated pools per dot (0: none)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the simulation")
    p.set_defaults(func=cmd_fig7)
    return top


def main(argv: list[str] | None = None) -> int:
    """`python -m deliberate.cli.theory theory ...`: the `theory` command on its own."""
    parser = argparse.ArgumentParser(prog="deliberate")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DeliberateError as e:
        print(f"deliberate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
