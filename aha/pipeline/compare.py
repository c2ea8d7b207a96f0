"""``aha compare``: one recipe trained with several algorithm variants under equal budgets, side by side.

Each variant is the recipe plus a few settings (below), run as its own ``aha train`` process (so that peak
memory is its own) in ``OUT/<variant>/``, with the same budget: ``max_train_minutes`` of training and, when
given, ``max_completions`` sampled completions. Runs that finished already are read back, not redone.
The comparison is written to ``OUT/compare.json``, ``compare.md`` and ``compare.png`` (held-out strict
accuracy against training time and against sampled completions).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aha.config import ConfigError, GRPOConfig, load_config
from aha.run import RunLayout
from aha.utils.io import JsonlFile, atomic_write_json, atomic_write_text

VARIANTS: dict[str, dict[str, Any]] = {
    "grpo": {},
    "dr_grpo": {"loss_type": "dr_grpo", "advantage_estimator": "none"},
    "dapo": {"loss_type": "dapo", "eps_high": 0.28, "dynamic_sampling": True, "mask_truncated": True},
    "gspo": {"loss_type": "gspo"},
    "rloo": {"advantage_estimator": "rloo"},
    "reinforce_pp": {"advantage_estimator": "reinforce_pp", "loss_type": "dapo"},
    "ppo": {"algorithm": "ppo", "loss_type": "dapo"},
}
"""The settings each variant adds to the recipe."""


def variant_overrides(name: str) -> list[str]:
    if name not in VARIANTS:
        raise ConfigError(f"--variants: unknown variant {name!r}; valid: {', '.join(VARIANTS)}")
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in VARIANTS[name].items()]


def compare(recipe: str | None, overrides: list[str], variants: list[str], budget_minutes: float,
            budget_completions: int, out: Path, console: Console) -> dict[str, Any]:
    budget = [f"max_train_minutes={budget_minutes}", f"max_completions={budget_completions}", "resume=true"]
    plans = {}
    for name in variants:  # every variant's config checked before any runs
        settings = [*overrides, *variant_overrides(name), *budget, f"output_dir={out / name}"]
        load_config(GRPOConfig, recipe, settings)
        plans[name] = settings
    out.mkdir(parents=True, exist_ok=True)
    for name, settings in plans.items():
        layout = RunLayout(out / name)
        if layout.summary.exists() and not json.loads(layout.summary.read_text()).get("stopped"):
            console.log(f"{name}: finished already ({layout.root})")
            continue
        console.log(f"{name}: training ({' '.join(variant_overrides(name)) or 'the recipe as it is'})")
        started = time.perf_counter()
        command = [sys.executable, "-m", "aha", "train", *([recipe] if recipe else []), *settings]
        done = subprocess.run(command)
        if done.returncode != 0:
            raise ConfigError(f"{name}: aha train exited with {done.returncode}; its run is {layout.root}")
        console.log(f"{name}: done in {(time.perf_counter() - started) / 60:.1f} min")
    results = {name: variant_result(out / name) for name in plans}
    atomic_write_json(out / "compare.json", results)
    atomic_write_text(out / "compare.md", markdown(results))
    plot(results, out / "compare.png")
    console.print(table(results))
    return results


def variant_result(root: Path) -> dict[str, Any]:
    layout = RunLayout(root)
    summary = json.loads(layout.summary.read_text(encoding="utf-8"))
    metrics = JsonlFile(layout.metrics).read()
    evals = JsonlFile(layout.evals).read()
    elapsed, sampled, curve = 0.0, 0, []
    by_step = {m["step"]: m for m in metrics}
    clock = {}
    for m in metrics:
        elapsed += m.get("time/step", 0.0)
        sampled += m.get("sampled_completions", 0)
        clock[m["step"]] = (elapsed, sampled)
    for e in evals:
        seconds, completions = clock.get(e["step"], (0.0, 0))
        curve.append({"step": e["step"], "minutes": round(seconds / 60, 2), "sampled_completions": completions,
                      "strict_accuracy": e.get("strict_accuracy"), "lenient_accuracy": e.get("lenient_accuracy")})
    return {"steps": summary["steps"], "train_minutes": round(summary["train_seconds"] / 60, 2),
            "peak_rss_gb": summary["peak_rss_gb"], "trainable_parameters": summary.get("trainable_parameters"),
            "sampled_completions": sampled, "generated_tokens": sum(m.get("generated_tokens", 0) for m in metrics),
            "step_seconds": round(summary["train_seconds"] / max(summary["steps"], 1), 2),
            "before": summary.get("before"), "after": summary.get("after"), "curve": curve,
            "last_rewards": [by_step[s]["reward"] for s in sorted(by_step)[-10:]]}


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def rows(results: dict[str, Any]) -> list[list[str]]:
    out = []
    for name, r in results.items():
        before, after = r["before"] or {}, r["after"] or {}
        out.append([name, str(r["steps"]), f"{r['train_minutes']:.1f}", f"{r['step_seconds']:.1f}",
                    f"{r['peak_rss_gb']:.1f}", f"{(r['trainable_parameters'] or 0) / 1e6:.0f}M",
                    str(r["sampled_completions"]),
                    f"{_pct(before.get('strict_accuracy'))} → {_pct(after.get('strict_accuracy'))}",
                    f"{_pct(before.get('lenient_accuracy'))} → {_pct(after.get('lenient_accuracy'))}"])
    return out


HEADER = ["variant", "steps", "train min", "s/step", "peak RSS GB", "trained params", "completions",
          "held-out strict", "held-out lenient"]


def markdown(results: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(results)]
    return "\n".join(lines) + "\n"


def table(results: dict[str, Any]) -> Table:
    t = Table(title="variants under equal budgets")
    for column in HEADER:
        t.add_column(column, justify="left" if column == "variant" else "right")
    for r in rows(results):
        t.add_row(*r)
    return t


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, r in results.items():
        curve = r["curve"]
        axes[0].plot([p["minutes"] for p in curve], [p["strict_accuracy"] for p in curve], "o-", label=name)
        axes[1].plot([p["sampled_completions"] for p in curve], [p["strict_accuracy"] for p in curve], "o-",
                     label=name)
    axes[0].set_xlabel("training minutes")
    axes[1].set_xlabel("sampled completions")
    for ax in axes:
        ax.set_ylabel("held-out strict accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
