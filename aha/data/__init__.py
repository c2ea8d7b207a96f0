"""Datasets (loading and validation), benchmarks, prompt templates and built-in tasks."""

from aha.data.benchmarks import BENCHMARKS, Benchmark, load_benchmark
from aha.data.prompts import R1_ZERO_INSTRUCTION, PromptBuilder
from aha.data.records import DataError, LoadResult, load_records, parse_field_map
from aha.data.tasks import TASKS, Task, make_task

__all__ = ["BENCHMARKS", "Benchmark", "DataError", "LoadResult", "PromptBuilder", "R1_ZERO_INSTRUCTION", "TASKS",
           "Task", "load_benchmark", "load_records", "make_task", "parse_field_map"]
