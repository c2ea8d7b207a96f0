"""Evaluation."""

from aha.eval.heldout import HeldoutResult, evaluate_heldout, judge

__all__ = ["HeldoutResult", "evaluate_heldout", "judge"]
