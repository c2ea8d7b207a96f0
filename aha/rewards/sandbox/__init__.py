"""A local sandbox for untrusted Python programs (see :mod:`aha.rewards.sandbox.runner`)."""

from aha.rewards.sandbox.runner import CaseRun, Job, Sandbox, SandboxLimits

__all__ = ["CaseRun", "Job", "Sandbox", "SandboxLimits"]
