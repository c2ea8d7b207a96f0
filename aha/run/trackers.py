"""Experiment trackers a run also reports to, when asked (``report_to: [tensorboard, wandb]``) and installed:
every line of metrics.jsonl and eval.jsonl goes to each of them as scalars at its step. metrics.jsonl stays
the record; a tracker is a view. A resumed run reports its steps again from the checkpoint on (TensorBoard
shows the later values; W&B resumes the same run id)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

def _scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {prefix + k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


class Trackers:
    """The trackers of one run; ``log`` sends a record's numbers to each."""

    def __init__(self, names: list[str], run_dir: Path, config: dict[str, Any]):
        self.writers: list[Any] = []
        for name in names:
            if name == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                self.writers.append(("tensorboard", SummaryWriter(log_dir=str(run_dir / "tensorboard"))))
            elif name == "wandb":
                import wandb

                run_id = "aha-" + "".join(c if c.isalnum() else "-" for c in run_dir.resolve().as_posix())[-60:]
                run = wandb.init(project=config.get("wandb_project") or "aha", name=run_dir.name, id=run_id,
                                 dir=str(run_dir), config=config, resume="allow")
                self.writers.append(("wandb", run))

    def log(self, record: dict[str, Any], prefix: str = "") -> None:
        step = int(record.get("step", 0))
        values = _scalars(record, prefix)
        for kind, writer in self.writers:
            if kind == "tensorboard":
                for key, value in values.items():
                    writer.add_scalar(key, value, step)
                writer.flush()
            else:
                writer.log(values, step=step)

    def close(self) -> None:
        for kind, writer in self.writers:
            if kind == "tensorboard":
                writer.close()
            else:
                writer.finish()
        self.writers = []
