"""The one place that knows the names of a run directory's files.

```
runs/<name>/
  config.yaml          the config as used, each field with its docstring
  metrics.jsonl        one line per step
  samples.jsonl        some completions per step, with their rewards
  eval.jsonl           held-out evaluations (before, every eval_steps, after)
  eval-step-N.jsonl    every held-out completion of the evaluation at step N, with its verdict
  checkpoints/step-N/  model/ (a plain HF folder), adapter/ (LoRA), <module>.safetensors, trainer_state.pt
  summary.json         what the run achieved; written last
```
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from aha.run.world import current_world
from aha.utils.io import remove_partial_directories

_STEP_DIR = re.compile(r"^step-(\d+)$")
_EVAL_SAMPLES = re.compile(r"^eval-step-(\d+)\.jsonl$")
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
STATE_FILE = "trainer_state.pt"
MANIFEST_FILE = "manifest.json"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (it would overwrite a run, or is not a run)."""


class RunLayout:
    """Paths inside one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunLayout({str(self.root)!r})"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.root / "samples.jsonl"

    @property
    def evals(self) -> Path:
        return self.root / "eval.jsonl"

    def eval_samples(self, step: int) -> Path:
        return self.root / f"eval-step-{step:06d}.jsonl"

    def eval_sample_files(self) -> list[tuple[int, Path]]:
        """(step, path) of every eval-step-N.jsonl, by step."""
        found = [(int(m.group(1)), p) for p in self.root.glob("eval-step-*.jsonl")
                 if (m := _EVAL_SAMPLES.match(p.name))]
        return sorted(found)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def checkpoint_dirs(self) -> list[tuple[int, Path]]:
        """Checkpoints, oldest first (one is renamed into place whole, once its manifest is written)."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), child) for child in self.checkpoints.iterdir()
                 if (m := _STEP_DIR.match(child.name)) and ((child / MANIFEST_FILE).exists()
                                                            or (child / STATE_FILE).exists())]
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoint_dirs()
        return found[-1][1] if found else None

    def holds_run(self) -> bool:
        return self.metrics.exists() or self.evals.exists() or bool(self.checkpoint_dirs())

    def clear(self) -> None:
        """Remove everything a run writes, so that it starts again from a clean directory."""
        for path in (self.config, self.metrics, self.samples, self.evals, self.summary):
            path.unlink(missing_ok=True)
        for _, path in self.eval_sample_files():
            path.unlink(missing_ok=True)
        if self.checkpoints.exists():
            shutil.rmtree(self.checkpoints)


def open_run_dir(output_dir: str, resume: bool, default_prefix: str = "runs/") -> RunLayout:
    """The run directory to write: a new one, or with ``resume`` an existing one to continue. Refuses to
    start a new run over an existing one. Leftovers of a process killed while writing are removed. In a
    distributed run rank 0 names, checks and prepares it, and every rank gets the same answer."""
    world = current_world()
    layout = RunLayout(world.broadcast(output_dir or time.strftime(f"{default_prefix}%Y%m%d-%H%M%S")))
    problem = None
    if world.is_main:
        if not resume and layout.holds_run():
            problem = (f"{layout.root} already holds a run; continue it with resume=true, or pick another "
                       "output_dir")
        else:
            layout.root.mkdir(parents=True, exist_ok=True)
            remove_partial_directories(layout.checkpoints)
            remove_partial_directories(layout.root)
    problem = world.broadcast(problem)
    if problem:
        raise RunDirError(problem)
    return layout


def resolve_model_source(name: str) -> str:
    """A model folder as given; a checkpoint directory -> its ``model/``; a run directory -> its latest
    checkpoint's ``model/``. Other names (hub ids, .gguf files, aliases) pass through unchanged."""
    path = Path(name)
    if not path.is_dir():
        return name
    if (path / "config.json").is_file():
        return str(path)
    if (path / MODEL_DIR / "config.json").is_file():
        return str(path / MODEL_DIR)
    checkpoint = RunLayout(path).latest_checkpoint()
    if checkpoint is not None and (checkpoint / MODEL_DIR / "config.json").is_file():
        return str(checkpoint / MODEL_DIR)
    raise RunDirError(f"{path}: not a model folder (no config.json), a checkpoint (no {MODEL_DIR}/) or a run "
                      "directory with completed checkpoints")
