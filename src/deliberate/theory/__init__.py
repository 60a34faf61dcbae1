"""The paper's theory (ICML 2025, §4, App. A–C): closed forms, a Monte Carlo check, figures.

    model     Theorem 1, Corollary 1, the selection scalars and the parameter checks
    simulate  ridge on a selected Gaussian pool at finite d, n (simulate, check_grid)
    figures   Fig. 3, Fig. 5c and Fig. 7 (drawn through deliberate.report.plots)

The model and simulation names are re-exported: `from deliberate import theory` then
`theory.predicted_error(...)`. `figures` is not imported here, so using the closed forms does not
load the report package; import `deliberate.theory.figures` for the plots.

Note: the name `simulate` here is the function; the module is `deliberate.theory.simulate`
(import from it by full path: `from deliberate.theory.simulate import check_grid`).
"""

from deliberate.theory.model import (
    KEEP_EASY,
    KEEP_HARD,
    STRATEGIES,
    SelectionScalars,
    Spectral,
    check_params,
    corollary1,
    predicted_error,
    selection_scalars,
    spectral,
    theorem1,
    threshold,
)
from deliberate.theory.simulate import CheckPoint, check_grid, simulate, single_threaded_blas

__all__ = [
    "KEEP_EASY",
    "KEEP_HARD",
    "STRATEGIES",
    "CheckPoint",
    "SelectionScalars",
    "Spectral",
    "check_grid",
    "check_params",
    "corollary1",
    "predicted_error",
    "selection_scalars",
    "simulate",
    "single_threaded_blas",
    "spectral",
    "theorem1",
    "threshold",
]
