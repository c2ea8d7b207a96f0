"""``aha train`` in a process that kills itself with SIGKILL at a named moment, for the exact-resume tests.

    python tests/trainer/killable_run.py MOMENT:N key=value ...

MOMENT is where the process dies, at the N-th time it gets there (counted in this process):
    generation   inside the rollout engine's generate()
    backward     right after a micro-batch's backward pass (gradients half accumulated)
    checkpoint   while a checkpoint is written (the model folder is there, the state file not yet)
    rename       a complete checkpoint folder written under its temporary name, not yet renamed into place
    log          half-way through writing a log line
    evaluation   inside a held-out evaluation
    rotation     while an old checkpoint is being deleted (renamed away, not yet removed)
    never        not at all (the run finishes)
    term, term2  not killed: sent SIGTERM (term2: twice) inside the N-th rollout, so the stop comes mid-step
Nothing here is in the package: the moments are reached by wrapping the package's own functions.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def terminate(times: int) -> None:
    for _ in range(times):
        os.kill(os.getpid(), signal.SIGTERM)


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import tests.trainer.helpers  # noqa: F401  (registers the test rewards)

    moment, _, nth = sys.argv[1].partition(":")
    nth = int(nth or 1)
    calls = {"n": 0}

    def reached() -> bool:
        calls["n"] += 1
        return calls["n"] == nth

    import torch

    import aha.rollout.hf as hf
    import aha.run.checkpoint as checkpoint
    import aha.trainer.grpo as grpo
    import aha.utils.io as io

    if moment in ("term", "term2"):
        original_generate = hf.HFBackend._generate_batch

        def generate_then_signal(self, *args, **kwargs):
            if reached():
                terminate(2 if moment == "term2" else 1)
            return original_generate(self, *args, **kwargs)

        hf.HFBackend._generate_batch = generate_then_signal
    elif moment == "generation":
        original = hf.HFBackend._generate_batch

        def generate(self, *args, **kwargs):
            if reached():
                die()
            return original(self, *args, **kwargs)

        hf.HFBackend._generate_batch = generate
    elif moment == "backward":
        original_backward = torch.Tensor.backward

        def backward(self, *args, **kwargs):
            original_backward(self, *args, **kwargs)
            if reached():
                die()

        torch.Tensor.backward = backward
    elif moment == "checkpoint":
        original_save = checkpoint.save_hf_folder

        def save_hf_folder(*args, **kwargs):
            original_save(*args, **kwargs)
            if reached():
                die()

        checkpoint.save_hf_folder = save_hf_folder
    elif moment == "rename":
        original_replace = io.os.replace

        class _Os:  # os for aha.utils.io only, with replace() wrapped
            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def replace(src, dst):
                if os.path.isdir(src) and os.path.basename(str(dst)).startswith("step-") and reached():
                    die()
                return original_replace(src, dst)

        io.os = _Os()
    elif moment == "log":
        original_append = io.JsonlFile.append

        def append(self, *records):
            if records and reached():
                text = io.jsonl_text(list(records))
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(text[: len(text) // 2])
                die()
            return original_append(self, *records)

        io.JsonlFile.append = append
    elif moment == "evaluation":
        original_eval = grpo.evaluate_heldout

        def evaluate_heldout(*args, **kwargs):
            if reached():
                die()
            return original_eval(*args, **kwargs)

        grpo.evaluate_heldout = evaluate_heldout
    elif moment == "rotation":
        original_rmtree = io.shutil.rmtree

        class _Shutil:
            def __getattr__(self, name):
                import shutil

                return getattr(shutil, name)

            @staticmethod
            def rmtree(path, *args, **kwargs):
                if ".tmp-removing-" in str(path) and reached():
                    die()
                return original_rmtree(path, *args, **kwargs)

        io.shutil = _Shutil()
    elif moment != "never":
        raise SystemExit(f"unknown moment {moment!r}")

    from aha.cli import main as aha_main

    return aha_main(["train", *sys.argv[2:]])


if __name__ == "__main__":
    sys.exit(main())
