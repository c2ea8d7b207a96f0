"""A math-verify worker process: reads ``{"id", "pred", "gold"}`` JSON lines on stdin, answers
``{"id", "equal", "error"}`` lines on stdout. Run as a script (not ``-m``), so that it imports math-verify
only, never ``aha``'s heavier modules.

It runs math-verify in its own main thread, where math-verify's signal-based time-outs work; the parent
(:class:`aha.rewards.verifier.MathVerifier`) adds a hard deadline and kills the worker past it, which also
covers work that signals cannot interrupt (a huge integer power inside C code).
"""

from __future__ import annotations

import json
import sys


def math_equal(pred: str, gold: str, timeout: int | None = 5) -> bool:
    """True when math-verify finds the two answers equal. Both are tried inside ``$…$`` first (so that
    bare LaTeX such as ``\\frac12`` parses), then as they are."""
    from math_verify import parse, verify

    options = {"parsing_timeout": timeout}
    gold_parsed = parse(f"${gold}$", **options) or parse(gold, **options)
    pred_parsed = parse(f"${pred}$", **options) or parse(pred, **options)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def main() -> None:
    timeout = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    math_equal("1", "1", timeout)  # import and warm up before the first request
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"id": request["id"], "equal": math_equal(request["pred"], request["gold"], timeout)}
        except Exception as err:  # math-verify's own time-out or a parser crash: this pair only
            answer = {"id": request["id"], "equal": None, "error": f"{type(err).__name__}: {err}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
