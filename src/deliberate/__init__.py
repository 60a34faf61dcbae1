"""deliberate: Deliberate Practice for synthetic data generation (Askari-Hemmat et al., ICML 2025)."""

from deliberate.errors import DeliberateError

__version__ = "0.1.0"
__all__ = ["DeliberateError", "__version__"]
