"""Datasets, prompt templates and built-in tasks."""

from aha.data.prompts import R1_ZERO_INSTRUCTION, PromptBuilder
from aha.data.records import DataError, load_jsonl
from aha.data.tasks import TASKS, Task, make_task

__all__ = ["DataError", "PromptBuilder", "R1_ZERO_INSTRUCTION", "TASKS", "Task", "load_jsonl", "make_task"]
