"""Where a GRPO step's time and memory go, for the default recipe (or any), side by side across settings.

Each variant is the default `aha train` run with some `key=value` overrides, run for a few steps in its own
process (so each has its own peak RSS), variants alternating over repetitions. Per variant: the step split
into sampling (generation, reward scoring), old/reference log-probs, forward-backward and the optimiser step
(with the gradient all-reduce), and PPO's critic (its values and its update); peak RSS; and the training
phase's model FLOP utilisation, 6 x parameters x tokens through the policy / forward-backward time, over this
machine's fp32 matmul rate measured in the same run (not for PPO, whose parameters count its critic).

    git worktree add /tmp/aha-before COMMIT          # the code to compare against
    .venv/bin/python benchmarks/step_split.py --steps 6 --repeats 2 \
        --variant "CHECKOUT=/tmp/aha-before" --variant "" --variant "micro_batch_size=8" --out runs/bench-step

Prints a Markdown table (min / median / max over the steps after the first of every repetition) and writes
results.json in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

PHASES = ["step", "generation", "scoring", "logprobs", "forward_backward", "optimizer", "critic"]


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """The best fp32 matmul rate of this machine, FLOP/s (square ``size`` matrices, torch's threads): the
    better of torch's product (MKL) and oneDNN's (``mkldnn._linear_pointwise``, what aha's linear layers call
    on CPU). On AMD processors MKL takes its AVX2 kernels; oneDNN uses AVX-512 where there is one, about twice
    the rate, so the peak that utilisation is measured against is the higher of the two."""
    return max(matmul_rates(size, repeats).values())


def best_seconds(run, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls of ``run``, after one untimed call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_rates(size: int = 2048, repeats: int = 10, precision: str = "highest") -> dict[str, float]:
    """fp32 FLOP/s of a square product through each library torch has: ``mkl`` (torch.mm) and ``onednn``, at a
    ``torch.set_float32_matmul_precision`` (medium: bfloat16 products, where the CPU has them)."""
    torch.set_float32_matmul_precision(precision)
    a, b = torch.randn(size, size), torch.randn(size, size)
    products = {"mkl": lambda: torch.mm(a, b)}
    onednn = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
    if onednn is not None:
        products["onednn"] = lambda: onednn(a, b, None, "none", [], "")
    rates = {name: 2 * size**3 / best_seconds(product, repeats) for name, product in products.items()}
    torch.set_float32_matmul_precision("highest")
    return rates


def precision_of(variant: str) -> str:
    """The matmul_precision a variant runs at (its override, else the default, highest)."""
    return next((o.split("=", 1)[1] for o in variant.split() if o.startswith("matmul_precision=")), "highest")


def passes_of(variant: str) -> int:
    """The optimisation passes a variant makes over each batch (its num_iterations override, else 1): the
    forward-backward time covers all of them, ``forward_tokens`` one."""
    return int(next((o.split("=", 1)[1] for o in variant.split() if o.startswith("num_iterations=")), 1))


def memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second of a large copy (read + write counted)."""
    src = torch.empty(megabytes * 2**20 // 4)
    src.fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


def run_variant(overrides: list[str], steps: int, run_dir: Path) -> dict:
    """One run; an override in capitals (``MALLOC_ARENA_MAX=2``) is an environment variable of its process, and
    ``CHECKOUT=DIR`` runs the ``aha`` of another checkout (an older commit, for a side-by-side comparison)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ)
    env.update(o.split("=", 1) for o in overrides if o.split("=", 1)[0].isupper())
    checkout = env.pop("CHECKOUT", None)
    settings = [o for o in overrides if not o.split("=", 1)[0].isupper()]
    cmd = [sys.executable, "-m", "aha", "train", f"output_dir={run_dir.resolve()}", f"max_steps={steps}",
           "eval_size=0", "save_steps=0", "max_train_minutes=0", *settings]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env, cwd=checkout)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the final checkpoint: 1.5 GB a run, unused here
    return {"metrics": metrics, "peak_rss_gb": summary["peak_rss_gb"], "params": summary["trainable_parameters"]}


def spread(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[],
                        help="space-separated key=value overrides of the default run (repeatable; none: the default)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-step")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = args.variant or [""]
    precisions = sorted({precision_of(v) for v in variants})
    peaks = {p: max(matmul_rates(precision=p).values()) for p in precisions}
    bandwidth = memory_bandwidth()
    results: dict[str, dict] = {v: {"steps": [], "peak_rss_gb": []} for v in variants}
    for repeat in range(args.repeats):
        order = variants if repeat % 2 == 0 else variants[::-1]  # alternate: neither always goes first
        for variant in order:
            run = run_variant(variant.split(), args.steps, out / f"run-{variants.index(variant)}-{repeat}")
            results[variant]["steps"].extend(run["metrics"][1:])  # the first step warms up
            results[variant]["peak_rss_gb"].append(run["peak_rss_gb"])
            results[variant]["params"] = run["params"]
            print(f"repeat {repeat} {variant or 'default'}: done", flush=True)
    for precision in precisions:  # measured before and after the runs: the better of the two
        rates = matmul_rates(precision=precision)
        peaks[precision] = max(peaks[precision], *rates.values())
        named = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in rates.items())
        print(f"fp32 matmul peak at precision {precision}: {peaks[precision] / 1e9:.1f} GFLOP/s "
              f"({named} after the runs)")
    peak = peaks["highest"] if "highest" in peaks else max(peaks.values())
    bandwidth = max(bandwidth, memory_bandwidth())
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s, {torch.get_num_threads()} threads; MFU is over the peak at "
          "each variant's own precision")
    header = ["variant", *[f"{p} s" for p in PHASES], "peak RSS GB", "train MFU", "completion tokens/s"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    summary = {"matmul_peak_flops": peak, "matmul_peak_flops_by_precision": peaks,
               "copy_bandwidth_bytes_per_s": bandwidth, "variants": {}}
    for variant, res in results.items():
        steps = res["steps"]
        phase = {p: [m[f"time/{p}"] for m in steps if f"time/{p}" in m] for p in PHASES}
        mfu = [6 * res["params"] * m["forward_tokens"] * passes_of(variant) / m["time/forward_backward"]
               / peaks[precision_of(variant)]
               for m in steps
               if m.get("time/forward_backward") and "time/critic" not in m]  # PPO's parameters count its critic: none
        tokens_per_s = [m["generated_tokens"] / m["time/step"] for m in steps]
        row = [variant or "default", *[spread(phase[p]) for p in PHASES], spread(res["peak_rss_gb"]),
               f"{100 * statistics.median(mfu):.0f}%" if mfu else "–", f"{statistics.median(tokens_per_s):.0f}"]
        print("| " + " | ".join(row) + " |")
        summary["variants"][variant or "default"] = {"phases": phase, "peak_rss_gb": res["peak_rss_gb"], "mfu": mfu,
                                                     "completion_tokens_per_s": tokens_per_s}
    (out / "results.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
