"""Evaluation: the paper's protocol (pass@1 over k samples, pass@k, cons@k) on benchmarks, and the
trainer's quick greedy held-out evaluation."""

from aha.eval.heldout import HeldoutResult, evaluate_heldout
from aha.eval.metrics import majority_vote, pass_at_k
from aha.eval.runner import evaluate

__all__ = ["HeldoutResult", "evaluate", "evaluate_heldout", "majority_vote", "pass_at_k"]
