"""The run directory: the names of its files, its logs, and its atomic checkpoints. Read by the trainers
(which write it), ``aha eval`` (which finds a run's latest model), and the analysis tools (which plot it)."""

from aha.run.checkpoint import DiskFullError, checkpoint_problem, load_checkpoint, save_checkpoint
from aha.run.layout import RunDirError, RunLayout, open_run_dir, resolve_model_source
from aha.run.logs import RunLogs

__all__ = ["DiskFullError", "RunDirError", "RunLayout", "RunLogs", "checkpoint_problem", "load_checkpoint",
           "open_run_dir", "resolve_model_source", "save_checkpoint"]
