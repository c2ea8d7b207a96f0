"""Reading runs back: training curves, rollout analytics (length, reflection, language mixing) and the aha
moment."""

from aha.analysis.curves import plot_run
from aha.analysis.reflection import AhaMoment, ReflectionCounter, find_aha_moment, rollout_stats

__all__ = ["AhaMoment", "ReflectionCounter", "find_aha_moment", "plot_run", "rollout_stats"]
