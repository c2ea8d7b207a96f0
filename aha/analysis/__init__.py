"""Reading runs back: training curves."""

from aha.analysis.curves import plot_run

__all__ = ["plot_run"]
