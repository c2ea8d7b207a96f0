"""The frozen models a trainer scores with: the reference of the KL term and the teacher of distillation."""

from __future__ import annotations

import copy

import torch

from aha.run.sharding import shard_model
from aha.trainer.core import Policy
from aha.trainer.preflight import check_model


def load_reference(config, policy: Policy, model_source: str | None) -> torch.nn.Module:
    """The frozen reference of the KL term: a copy of the starting policy (sharded like it, when it is)."""
    if not policy.sharded:
        return copy.deepcopy(policy.model).eval().requires_grad_(False)
    from aha.models import load_model

    model, _ = load_model(model_source or config.model, dtype=config.dtype, device=config.device, seed=config.seed,
                          tokenizer=policy.tokenizer)
    return shard_model(model.eval().requires_grad_(False), policy.world)


def load_teacher(config, tokenizer, why: str) -> torch.nn.Module:
    """The frozen teacher that ``config.teacher`` names; its tokenizer must be the student's, else a ConfigError
    on the ``teacher`` field that ends with ``why`` (what the distillation compares)."""
    from aha.models import load_model, load_tokenizer

    source = check_model(config, "teacher")
    teacher_tokenizer = load_tokenizer(source)
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise config.error("teacher", f"{config.teacher!r} has another tokenizer than the student; {why}")
    model, _ = load_model(source, dtype=config.dtype, device=config.device, seed=config.seed,
                          tokenizer=teacher_tokenizer)
    return model.eval().requires_grad_(False)
