"""Reports and figures: a run's report, the cross-run comparison, sample grids.

    plots    the one module that imports matplotlib: `figure` and the atomic `save`
    grids    sample grids, one row per class (save_sample_grid, save_paired_grid)
    run      a practice run's report/ folder (write_practice_report)
    runs     loading finished run folders (load_run, expand_dirs, label_of) and their statistics
    tables   the markdown tables of `deliberate report`
    compare  `deliberate report RUN_DIR...`: the comparison plots and report.md (write_report)

The names below are re-exported so `from deliberate.report import X` keeps working.
"""

from deliberate.report.compare import scaling_lines, write_report
from deliberate.report.grids import (
    CELL_PX,
    GAP_PX,
    PAD_PX,
    PANEL_TITLE_PX,
    TITLE_PX,
    save_paired_grid,
    save_sample_grid,
)
from deliberate.report.run import (
    plot_entropy_histograms,
    plot_training_curves,
    write_practice_report,
)
from deliberate.report.runs import expand_dirs, label_of, load_run
from deliberate.report.tables import cost_table, results_table, shifted_table

__all__ = [
    "CELL_PX",
    "GAP_PX",
    "PAD_PX",
    "PANEL_TITLE_PX",
    "TITLE_PX",
    "cost_table",
    "expand_dirs",
    "label_of",
    "load_run",
    "plot_entropy_histograms",
    "plot_training_curves",
    "results_table",
    "save_paired_grid",
    "save_sample_grid",
    "scaling_lines",
    "shifted_table",
    "write_practice_report",
    "write_report",
]
