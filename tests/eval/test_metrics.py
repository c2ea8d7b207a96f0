"""pass@k against brute-force enumeration, majority vote with equivalent answers pooled, benchmark metrics."""

import itertools
import math

import pytest

from aha.eval import majority_vote, pass_at_k
from aha.eval.metrics import answer_classes, benchmark_metrics, vote_winner


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_hand_values_and_limits():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)       # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)      # pass@1 is the plain success rate
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 1, 5) == 1.0
    # large n: the product form stays finite where C(n, k) would not fit a float
    assert pass_at_k(2000, 1000, 64) == pytest.approx(1 - math.comb(1000, 64) / math.comb(2000, 64))
    for bad in [(0, 0, 1), (3, 4, 1), (3, 1, 4), (3, 1, 0)]:
        with pytest.raises(ValueError, match="pass_at_k needs"):
            pass_at_k(*bad)


def test_majority_vote_pools_equivalent_answers():
    # 0.5, \frac{1}{2} and 1/2 are one answer of 3 votes; 3 has 2 votes
    assert majority_vote(["3", "0.5", "\\frac{1}{2}", "3", "1/2"]) == "0.5"
    assert majority_vote(["\\frac{1}{2}", "3", "0.5"]) == "\\frac{1}{2}"  # the representative appeared first


def test_majority_vote_ties_and_empties():
    assert majority_vote(["7", "5", "5", "7"]) == "7"          # tie: the class that appeared first
    assert majority_vote(["5", None, "7", "", "7"]) == "7"     # None and blank answers cast no vote
    assert majority_vote([None, " "]) is None and majority_vote([]) is None


def test_answer_classes_count_votes_and_first_positions():
    classes = answer_classes(["2", "x", "2.0", "4/2", "y"], equal=lambda a, b: a.strip("x") == b.strip("x") or
                             (a[0].isdigit() and b[0].isdigit() and float(eval(a)) == float(eval(b))))
    assert [(c.representative, c.first_index, c.count) for c in classes] == [("2", 0, 3), ("x", 1, 1), ("y", 4, 1)]
    assert vote_winner(["a", "b", "b"], equal=str.__eq__).first_index == 1


def test_benchmark_metrics_by_hand():
    # problem 0: 1 of 4 correct; problem 1: 4 of 4 correct
    samples = [{"problem": p, "sample": s, "correct": ok, "tokens": 10 * (s + 1), "finish_reason": reason,
                "format": s == 0, "extracted": None if (p, s) == (0, 3) else "1", "score": 1.0 if ok else 0.0}
               for p, oks in [(0, [True, False, False, False]), (1, [True] * 4)]
               for s, (ok, reason) in enumerate(zip(oks, ["stop", "stop", "length", "stop"]))]
    metrics = benchmark_metrics(samples, {0: False, 1: True}, pass_ks=[2])
    assert metrics["problems"] == 2 and metrics["samples"] == 8 and metrics["k"] == 4
    assert metrics["pass@1"] == pytest.approx((0.25 + 1.0) / 2)
    assert metrics["pass@2"] == pytest.approx((0.5 + 1.0) / 2)   # 1 - C(3,2)/C(4,2) = 0.5 for problem 0
    assert metrics["pass@4"] == 1.0
    assert metrics["cons@4"] == 0.5
    assert metrics["mean_response_tokens"] == 25.0 and metrics["truncation_rate"] == 0.25
    assert metrics["format_rate"] == 0.25 and metrics["no_answer_rate"] == 0.125 and metrics["ungraded"] == 0
    assert metrics["pass@1_stderr"] == pytest.approx(0.375)     # std of [0.25, 1.0] is 0.5303; / sqrt(2)
