"""Gradient checkpointing for a model kept in evaluation mode (the RL trainers' policy and critic)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from transformers.modeling_layers import GradientCheckpointingLayer


@contextlib.contextmanager
def checkpointed_layers(model: torch.nn.Module) -> Iterator[None]:
    """transformers recomputes a layer in the backward pass (gradient checkpointing) only while that layer is in
    training mode, and the RL trainers keep the policy in evaluation mode, so that its forward computes what
    sampling computed (no dropout, no router noise): ``gradient_checkpointing=true`` would otherwise hold every
    activation as before. Within the block each layer with checkpointing on that is in evaluation mode is put in
    training mode itself — its submodules stay as they are — with the layer's own dropout rates at 0; all is
    restored after. A layer already in training mode (supervised fine-tuning) is left as it is."""
    changed: list[tuple[torch.nn.Module, dict[str, float]]] = []
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing and not module.training:
            rates = {k: v for k, v in vars(module).items() if "dropout" in k and isinstance(v, float) and v > 0}
            changed.append((module, rates))
            module.training = True
            for name in rates:
                setattr(module, name, 0.0)
    try:
        yield
    finally:
        for module, rates in changed:
            module.training = False
            for name, rate in rates.items():
                setattr(module, name, rate)


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Gradient (activation) checkpointing on every decoder layer of ``model``, non-reentrant (gradients reach
    inputs that do not require them, LoRA's frozen embeddings included)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x's name
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
