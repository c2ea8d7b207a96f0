"""Training curves of a run directory (reward, accuracy, format, completion length, reflection rate) as one
PNG, with the aha moment (:func:`aha.analysis.reflection.find_aha_moment` on the reflection rate) marked; for a
supervised run (aha sft, a distillation's student), its loss, gradient norm and learning rate."""

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
SUPERVISED_PANELS = [
    ("loss", "training loss"),
    ("grad_norm", "gradient norm"),
    ("lr", "learning rate"),
]


def is_supervised(rows: list[dict]) -> bool:
    """Whether a run's metrics are a supervised run's (aha sft, a distillation's student): a loss, no rewards."""
    return bool(rows) and not any("reward" in row for row in rows)


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = RunLayout(run_dir).metrics
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} a run directory?)")
    return JsonlFile(path).read()


def plot_run(run_dir: str | Path, out: str | Path | None = None, smooth: int = 5) -> Path:
    """Write the run's curves (raw and a moving average of ``smooth`` steps) to ``out`` (default
    ``<run>/curves.png``); held-out evaluations are marked on the accuracy panel (a supervised run's: on its loss
    panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    evals = JsonlFile(RunLayout(run_dir).evals).read()
    panels = SUPERVISED_PANELS if is_supervised(rows) else PANELS
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, title) in zip(axes, panels):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, alpha=0.35, color="tab:blue")
            window = 1 if key == "lr" else max(1, min(smooth, len(values)))  # a schedule is not noise
            averaged = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
                        for i in range(len(values))]
            ax.plot(steps, averaged, color="tab:blue")
        if key == "reflection/rate" and points:
            moment = find_aha_moment(values)
            if moment is not None:
                ax.axvline(steps[moment.index], color="tab:red", linestyle=":", label="aha moment")
                ax.legend(fontsize=7)
        marks = {"reward/accuracy": [("strict_accuracy", "o-", "tab:green", "held-out strict"),
                                     ("lenient_accuracy", "s--", "tab:orange", "held-out lenient")],
                 "loss": [("loss", "o-", "tab:green", "held-out loss")]}.get(key, [])
        for field, style, colour, label in marks:
            held = [(e["step"], e[field]) for e in evals if isinstance(e.get(field), (int, float))]
            if held:
                ax.plot([h[0] for h in held], [h[1] for h in held], style, color=colour, label=label)
                ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
