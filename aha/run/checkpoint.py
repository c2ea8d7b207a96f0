"""Atomic checkpoints that resume exactly: model, optimiser, scheduler, extra networks, RNG states, the
size of every log, and the trainer's own state.

Layout of ``<run>/checkpoints/step-000040/``:
    model/                  a plain HF folder (LoRA adapters merged in) that ``from_pretrained`` loads unchanged
    adapter/                the PEFT adapter (LoRA runs only), what a resumed run loads
    <name>.safetensors      each extra network the trainer keeps (a reference model, a value model)
    trainer_state.pt        optimiser, scheduler, RNG states, step, log sizes, trainer state

A checkpoint is written in a temporary folder and renamed into place whole (``trainer_state.pt`` last), so
a process killed while saving leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_model

from aha.models import is_peft, save_hf_folder
from aha.run.layout import ADAPTER_DIR, MODEL_DIR, STATE_FILE, RunLayout
from aha.utils.io import atomic_directory, remove_directory


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(layout: RunLayout, step: int, *, model, tokenizer, optimizer, scheduler,
                    modules: dict[str, torch.nn.Module] | None = None, state: dict[str, Any] | None = None,
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` (replacing one of the same step) and delete all but the ``keep`` newest
    (0 keeps every one)."""
    final = layout.checkpoint(step)
    with atomic_directory(final) as tmp:
        save_hf_folder(model, tokenizer, tmp / MODEL_DIR)
        if is_peft(model):
            model.save_pretrained(tmp / ADAPTER_DIR)
        for name, module in (modules or {}).items():
            save_model(module, str(tmp / f"{name}.safetensors"))  # tied weights stored once
        trainer_state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "rng": rng_state(), **(state or {})}
        torch.save(trainer_state, tmp / STATE_FILE)
    if keep > 0:
        for _, old in layout.checkpoint_dirs()[:-keep]:
            remove_directory(old)
    return final


def load_checkpoint(path: str | Path, *, model, optimizer, scheduler,
                    modules: dict[str, torch.nn.Module] | None = None) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote into live objects; returns the trainer state."""
    path = Path(path)
    if is_peft(model):
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        set_peft_model_state_dict(model, load_peft_weights(str(path / ADAPTER_DIR)))
    else:
        weights: dict[str, torch.Tensor] = {}
        for shard in sorted((path / MODEL_DIR).glob("*.safetensors")):
            weights.update(load_file(shard))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        real_missing = [k for k in missing if not _is_tied(model, k)]
        if real_missing or unexpected:
            raise RuntimeError(f"{path}: checkpoint does not match the model (missing {real_missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
    for name, module in (modules or {}).items():
        load_model(module, str(path / f"{name}.safetensors"))
    state = torch.load(path / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    return key.endswith("lm_head.weight") and bool(getattr(model.config, "tie_word_embeddings", False))
