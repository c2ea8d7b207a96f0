"""Training curves of a run directory (reward, accuracy, format, completion length, reflection rate) as one
PNG, with the aha moment (:func:`aha.analysis.reflection.find_aha_moment` on the reflection rate) marked."""

from __future__ import annotations

from pathlib import Path

from aha.analysis.reflection import find_aha_moment
from aha.run.layout import RunLayout
from aha.utils.io import JsonlFile

PANELS = [
    ("reward", "reward (weighted sum)"),
    ("reward/accuracy", "accuracy of sampled completions"),
    ("format_rate", "R1-Zero format rate"),
    ("completion_length", "completion length (tokens)"),
    ("reflection/rate", "responses with a reflection phrase"),
]


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = RunLayout(run_dir).metrics
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} a run directory?)")
    return JsonlFile(path).read()


def plot_run(run_dir: str | Path, out: str | Path | None = None, smooth: int = 5) -> Path:
    """Write the run's curves (raw and a moving average of ``smooth`` steps) to ``out`` (default
    ``<run>/curves.png``); held-out evaluations are marked on the accuracy panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    evals = JsonlFile(RunLayout(run_dir).evals).read()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    for ax, (key, title) in zip(axes, PANELS):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, alpha=0.35, color="tab:blue")
            window = max(1, min(smooth, len(values)))
            averaged = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
                        for i in range(len(values))]
            ax.plot(steps, averaged, color="tab:blue")
        if key == "reflection/rate" and points:
            moment = find_aha_moment(values)
            if moment is not None:
                ax.axvline(steps[moment.index], color="tab:red", linestyle=":", label="aha moment")
                ax.legend(fontsize=7)
        if key == "reward/accuracy" and evals:
            ax.plot([e["step"] for e in evals], [e["strict_accuracy"] for e in evals], "o-", color="tab:green",
                    label="held-out strict")
            ax.plot([e["step"] for e in evals], [e["lenient_accuracy"] for e in evals], "s--", color="tab:orange",
                    label="held-out lenient")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
