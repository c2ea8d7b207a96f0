"""Atomic checkpoints that resume exactly: model, optimiser, scheduler, RNG states and step.

Layout of ``<run>/checkpoints/step-000040/``:
    model/             a plain HF folder (LoRA adapters merged in) that ``from_pretrained`` loads unchanged
    adapter/           the PEFT adapter (LoRA runs only), what a resumed run loads
    reference.safetensors   the reference model's weights (when it is reset during training)
    trainer_state.pt   optimiser, scheduler, RNG states, step, run clock

A checkpoint is written under a temporary name and renamed into place, so a crash mid-save leaves the
previous checkpoint as the latest one.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from aha.models import is_peft, save_hf_folder

_STEP_DIR = re.compile(r"^step-(\d+)$")


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


def checkpoint_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Completed checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / "trainer_state.pt").exists():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(run_dir: str | Path, step: int, *, model, tokenizer, optimizer, scheduler,
                    reference: torch.nn.Module | None = None, extra: dict[str, Any] | None = None,
                    keep: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:06d}-", dir=root))
    try:
        save_hf_folder(model, tokenizer, tmp / "model")
        if is_peft(model):
            model.save_pretrained(tmp / "adapter")
        if reference is not None:
            save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp / "reference.safetensors")
        state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": rng_state(), **(extra or {})}
        torch.save(state, tmp / "trainer_state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, *, model, optimizer, scheduler,
                    reference: torch.nn.Module | None = None) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote into live objects; returns the trainer state."""
    path = Path(path)
    if is_peft(model):
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        set_peft_model_state_dict(model, load_peft_weights(str(path / "adapter")))
    else:
        weights: dict[str, torch.Tensor] = {}
        for shard in sorted((path / "model").glob("*.safetensors")):
            weights.update(load_file(shard))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        real_missing = [k for k in missing if not _is_tied(model, k)]
        if real_missing or unexpected:
            raise RuntimeError(f"{path}: checkpoint does not match the model (missing {real_missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
    if reference is not None and (path / "reference.safetensors").exists():
        reference.load_state_dict(load_file(path / "reference.safetensors"))
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    return key.endswith("lm_head.weight") and bool(getattr(model.config, "tie_word_embeddings", False))
