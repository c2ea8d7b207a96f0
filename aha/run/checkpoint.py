"""Atomic checkpoints that resume exactly: model, optimiser, scheduler, extra networks, RNG states, the
size of every log, and the trainer's own state.

Layout of ``<run>/checkpoints/step-000040/``:
    model/                  a plain HF folder (LoRA adapters merged in) that ``from_pretrained`` loads unchanged
    adapter/                the PEFT adapter (LoRA runs only), what a resumed run loads
    <name>.safetensors      each extra network the trainer keeps (a reference model, a value model)
    trainer_state.pt        optimiser, scheduler, RNG states, step, log sizes, trainer state

A checkpoint is written in a temporary folder and renamed into place whole, so a process killed while saving
leaves the previous checkpoint as the latest one. Its ``manifest.json`` (written last) lists every file with
its size and SHA-256; a checkpoint whose files do not match it (truncated, corrupted, missing) is reported
and set aside on resume, and the one before it is used. Free disk space is checked before a save; a disk
that fills up during one leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from aha.models import is_peft, save_hf_folder
from aha.run.layout import ADAPTER_DIR, MANIFEST_FILE, MODEL_DIR, STATE_FILE, RunLayout
from aha.run.sharding import is_sharded, load_full_optimizer_state, load_full_state
from aha.utils.io import atomic_directory, file_sha256, remove_directory


class DiskFullError(RuntimeError):
    """A checkpoint could not be written for want of disk space; the previous one is intact."""


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
                    keep: int = 2, gathered: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``step`` (replacing one of the same step) and delete all but the ``keep`` newest
    (0 keeps every one). Raises DiskFullError, the previous checkpoint intact, when the disk cannot hold it.
    ``gathered``: the unsharded states of a sharded run (``model``, ``optimizer``, and ``modules`` by name; from
    :mod:`aha.run.sharding`), written in place of the live objects' own."""
    gathered = gathered or {}
    gathered_modules = gathered.get("modules", {})
    final = layout.checkpoint(step)
    check_disk_space(layout, model, modules)
    try:
        with atomic_directory(final) as tmp:
            save_hf_folder(model, tokenizer, tmp / MODEL_DIR, state_dict=gathered.get("model"))
            if is_peft(model):
                model.save_pretrained(tmp / ADAPTER_DIR)
            for name, module in (modules or {}).items():
                if name in gathered_modules:  # tensors of their own: safetensors refuses shared (tied) storage
                    save_file({k: v.clone() for k, v in gathered_modules[name].items()},
                              str(tmp / f"{name}.safetensors"))
                else:
                    save_model(module, str(tmp / f"{name}.safetensors"))  # tied weights stored once
            optimizer_state = gathered["optimizer"] if "optimizer" in gathered else optimizer.state_dict()
            trainer_state = {"step": step, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                             "rng": rng_state(), **(state or {})}
            torch.save(trainer_state, tmp / STATE_FILE)
            write_manifest(tmp)
    except (OSError, RuntimeError) as err:
        if _is_disk_full(err):
            previous = layout.latest_checkpoint()
            raise DiskFullError(f"the disk filled up while writing checkpoint {final.name} in {layout.checkpoints}; "
                                f"nothing of it was kept, the previous checkpoint ({previous or 'none'}) is intact; "
                                "free some space, then resume") from None
        raise
    if keep > 0:
        for _, old in layout.checkpoint_dirs()[:-keep]:
            remove_directory(old)
    return final


def _is_disk_full(err: BaseException) -> bool:
    return getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(err)


def checkpoint_bytes(model: torch.nn.Module, modules: dict[str, torch.nn.Module] | None = None) -> int:
    """Roughly what a checkpoint takes: the weights, AdamW's two moments of every trained one, the extra
    networks."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trained = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    extra = sum(p.numel() * p.element_size() for m in (modules or {}).values() for p in m.parameters())
    return weights + 2 * trained + extra


def check_disk_space(layout: RunLayout, model, modules=None) -> None:
    """Refuse to start a save the disk cannot hold (the size of the last checkpoint, or an estimate)."""
    layout.checkpoints.mkdir(parents=True, exist_ok=True)
    latest = layout.latest_checkpoint()
    needed = sum(f.stat().st_size for f in latest.rglob("*") if f.is_file()) if latest else \
        checkpoint_bytes(model, modules)
    free = shutil.disk_usage(layout.checkpoints).free
    if free < 1.1 * needed:
        raise DiskFullError(f"not enough disk space for a checkpoint in {layout.checkpoints}: it needs about "
                            f"{needed / 2**30:.2f} GiB, {free / 2**30:.2f} GiB are free; the previous checkpoint "
                            f"({latest or 'none'}) is intact; free some space, then resume")




def write_manifest(folder: Path) -> None:
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=1) + "\n", encoding="utf-8")


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint cannot be trusted (a file missing, truncated or changed), or None."""
    manifest = path / MANIFEST_FILE
    if not manifest.exists():
        return None if (path / STATE_FILE).exists() else "no manifest.json and no trainer_state.pt"
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as err:
        return f"unreadable manifest.json ({err})"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {expected['bytes']}"
        if file_sha256(file) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


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
        if is_sharded(model):  # every rank reads the whole file and keeps its shard
            missing, unexpected = load_full_state(model, weights, strict=False)
        else:
            missing, unexpected = model.load_state_dict(weights, strict=False)
        real_missing = [k for k in missing if not _is_tied(model, k)]
        if real_missing or unexpected:
            raise RuntimeError(f"{path}: checkpoint does not match the model (missing {real_missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
    for name, module in (modules or {}).items():
        if is_sharded(module):
            load_full_state(module, load_file(path / f"{name}.safetensors"), strict=False)
        else:
            load_model(module, str(path / f"{name}.safetensors"))
    state = torch.load(path / STATE_FILE, weights_only=False)
    if is_sharded(model):
        load_full_optimizer_state(model, optimizer, state["optimizer"])
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    return key.endswith("lm_head.weight") and bool(getattr(model.config, "tie_word_embeddings", False))
