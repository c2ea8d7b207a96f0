"""Every input a run needs, checked before any model loads: the task and its data, every reward and its
options, the model source. Each failure is one line naming the file and line or the field."""

from __future__ import annotations

from dataclasses import dataclass

from aha.config import ConfigError
from aha.data.readers import DataError
from aha.data.tasks import Task, make_task
from aha.models import model_source_problem
from aha.rewards import RewardTerm, build_rewards
from aha.run import RunDirError, resolve_model_source


@dataclass
class Inputs:
    task: Task
    rewards: list[RewardTerm]
    model_source: str
    """The loadable name of the model: a run or checkpoint directory resolved to its model folder."""


def check_model(config, field: str = "model") -> str:
    """The loadable source of the model a field names, or a ConfigError naming the field."""
    try:
        source = resolve_model_source(getattr(config, field))
    except RunDirError as err:
        raise config.error(field, str(err)) from None
    problem = model_source_problem(source)
    if problem:
        raise config.error(field, problem)
    return source


def check_rewards(config) -> list[RewardTerm]:
    try:
        return build_rewards(config.rewards)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{config.where('rewards')}{err}") from None


def check_task(config) -> Task:
    try:
        return make_task(config.task, config.task_options, config.eval_size, config.seed, config.field_map,
                         config.eval_dataset, config.on_error)
    except DataError:
        raise  # already names file:line
    except (ValueError, TypeError) as err:
        raise config.error("task", str(err)) from None


def check_inputs(config, task: Task | None = None) -> Inputs:
    """The task (``task`` when one is handed in), rewards and model source of an RL config, or the first
    problem with any of them."""
    rewards = check_rewards(config) if config.rewards else []
    task = task or check_task(config)
    if getattr(config, "advantage_estimator", "") == "process" and not task.has_step_rewards:
        raise config.error("advantage_estimator", f"process needs a task that gives step rewards; {task.name!r} "
                                                  "does not (implement Task.step_rewards)")
    if getattr(config, "teacher", None):
        check_model(config, "teacher")
    return Inputs(task, rewards, check_model(config))


__all__ = ["ConfigError", "DataError", "Inputs", "check_inputs", "check_model", "check_rewards", "check_task"]
