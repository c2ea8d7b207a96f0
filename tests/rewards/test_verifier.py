"""math-verify behind hard deadlines: threads, worker processes, a pathological input, a dead worker."""

import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from aha.rewards.verifier import MathVerifier, plain_number, unevaluated


def test_plain_numbers_are_decided_without_math_verify():
    assert plain_number("1,000") == 1000 and plain_number("-0.50") == -0.5 and plain_number("1,00") is None
    assert plain_number("\\frac12") is None and plain_number("3x") is None


@pytest.mark.parametrize("answer, expected", [
    ("8 + 2 - 7", True), ("1-7-8", True), ("2 \\times 3", True), ("2 \\cdot 3", True), ("6 \\div 2", True),
    ("2^{10}", True), ("2**3", True), ("3·4", True), ("2(3+4)", True), ("10^{-3}", True),
    ("\\frac{1}{2} + \\frac{1}{2}", True), ("(1+2) - 3", True), ("-\\frac12", False), ("2\\sqrt{2}", False),
    ("(-\\infty, 3]", False),
    ("-14", False), ("- 2", False), ("x = 3", False), ("8 + 2 - 7 = 3", False), ("\\frac{1}{2}", False),
    ("3/4", False), ("1,000", False), ("1e-5", False), ("3.5", False), ("\\sqrt{4}", False), ("(-3)", False),
])
def test_arithmetic_still_to_do_is_recognised(answer, expected):
    assert unevaluated(answer) is expected


def test_an_answer_that_restates_the_question_is_not_the_gold_value():
    """math-verify evaluates ``8 + 2 - 7`` to 3; a policy that learned to copy the question into its answer
    tag would be paid for every problem. Against a plain-number gold it is wrong; its result is right."""
    verifier = MathVerifier()
    try:
        assert verifier.equal_many([("8 + 2 - 7", "3"), ("8 + 2 - 7 = 3", "3"), ("3", "3"), ("1 - 3", "-2"),
                                    ("p - q", "p - q"), ("\\frac{3}{4}", "0.75")]) == [False, True, True, False,
                                                                                     True, True]
    finally:
        verifier.close()


def test_pathological_answer_is_bounded_from_a_thread():
    """math-verify's signal time-outs cannot work in a thread; the worker's deadline does."""
    verifier = MathVerifier(timeout=1.0)
    results, reasons = [], {}
    thread = threading.Thread(target=lambda: results.append(
        verifier.equal_many([("9^{9^{9^{9^{9}}}}", "5"), ("3", "3"), ("\\frac{1}{2}", "0.5")], reasons)))
    start = time.perf_counter()
    thread.start()
    thread.join(30)
    elapsed = time.perf_counter() - start
    verifier.close()
    assert results and results[0][1:] == [True, True]
    assert results[0][0] in (False, None)  # given up on: math-verify's own time-out, or the hard deadline
    assert elapsed < 10


def hung_worker() -> subprocess.Popen:
    """A stand-in worker process that reads requests and never answers."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(20)"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def test_a_hung_worker_costs_one_pair_and_is_replaced():
    verifier = MathVerifier(timeout=0.5)
    worker = verifier._workers[0]
    worker.stop()
    worker.proc = hung_worker()  # takes requests, never answers
    reasons = {}
    assert verifier.equal_many([("\\frac{2}{4}", "0.5")], reasons) == [None]
    assert "timed out" in reasons[0]
    assert verifier.equal_many([("\\frac{2}{4}", "0.5"), ("\\sqrt{4}", "2")]) == [True, True]
    verifier.close()


def test_options_are_validated():
    with pytest.raises(ValueError, match="timeout"):
        MathVerifier(timeout=0)
    with pytest.raises(ValueError, match="workers"):
        MathVerifier(workers=0)


def _verify_in_worker(pairs):
    return MathVerifier().equal_many(pairs)


def test_works_in_worker_processes():
    with ProcessPoolExecutor(1) as pool:
        assert pool.submit(_verify_in_worker, [("\\frac12", "0.5"), ("2", "3")]).result(120) == [True, False]
