"""The run directory: the names of its files, its logs, and its atomic checkpoints; and the run's processes
(one, or several under torchrun). Read by the trainers (which write it), ``aha eval`` (which finds a run's
latest model), and the analysis tools (which plot it)."""

from aha.run.checkpoint import DiskFullError, checkpoint_problem, load_checkpoint, save_checkpoint
from aha.run.layout import RunDirError, RunLayout, open_run_dir, resolve_model_source
from aha.run.logs import RunLogs
from aha.run.world import ShardedBackend, World, WorldError, current_world, init_world, leave_world

__all__ = ["DiskFullError", "RunDirError", "RunLayout", "RunLogs", "checkpoint_problem", "load_checkpoint",
           "open_run_dir", "resolve_model_source", "save_checkpoint", "ShardedBackend", "World", "WorldError",
           "current_world", "init_world", "leave_world"]
