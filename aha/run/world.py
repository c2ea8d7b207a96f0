"""The processes of a run: one, or N launched by ``torchrun`` (``torch.distributed``, gloo on CPU, NCCL on GPU).

Data parallelism as every trainer uses it:

    the step's work (prompts, examples)   identical on every rank, split into contiguous shares
    each rank                             generates, scores, or trains on its share
    gathered                              rollouts and evaluation samples: every rank holds the whole step
    gradients                             summed over ranks (all-reduce) before clipping and the optimiser
                                          step; each rank's loss is already normalised by the global counts,
                                          so the sum is the single-process gradient
    decisions                             stop, out of time, a skipped update: agreed by all ranks
    files                                 written by rank 0 only (logs, checkpoints); read by all

With one process every method is a no-op, so the trainers read the same either way.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch

if TYPE_CHECKING:
    from aha.rollout import Generation, GenerationBackend, SamplingParams

T = TypeVar("T")


class WorldError(RuntimeError):
    """The distributed launch is not usable (unsupported command or setting, a rank that failed)."""


@dataclass
class World:
    """This process's place among the run's processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # --- splitting work ----------------------------------------------------------------------------
    def share(self, count: int) -> range:
        """This rank's contiguous share of ``count`` items (the first ``count % world_size`` ranks take one
        more), so that gathering the shares in rank order restores the original order."""
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))

    def gather(self, items: list[T]) -> list[T]:
        """Every rank's ``items`` (picklable), concatenated in rank order, on every rank."""
        if not self.distributed:
            return list(items)
        parts: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(parts, items)
        return [item for part in parts for item in part]

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` (picklable) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    # --- agreeing ----------------------------------------------------------------------------------
    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over ranks (keys: the union over ranks; a key a rank lacks counts 0 there)."""
        if not self.distributed:
            return dict(values)
        keys = sorted({k for part in self.gather([sorted(values)]) for k in part})
        totals = torch.tensor([float(values.get(k, 0.0)) for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(totals, op=torch.distributed.ReduceOp.SUM)
        return dict(zip(keys, totals.cpu().tolist()))

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on some rank."""
        if not self.distributed:
            return bool(flag)
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item() > 0)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum each parameter's gradient over ranks, in a few flat buffers (a rank that trained on nothing
        this step contributes zeros)."""
        if not self.distributed or not params:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(params, 2**24):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
            at = 0
            for p in bucket:
                n = p.grad.numel()
                p.grad.copy_(flat[at: at + n].view_as(p.grad))
                at += n

    @property
    def device(self) -> torch.device:
        """Where this rank's collectives run: its GPU under NCCL, else the CPU."""
        if self.distributed and torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def _buckets(params: list[torch.nn.Parameter], limit: int) -> list[list[torch.nn.Parameter]]:
    """Parameters grouped by dtype and device into runs of at most ``limit`` elements (one run may exceed it
    when a single tensor does)."""
    buckets: list[list[torch.nn.Parameter]] = []
    current: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        if current and (size + p.numel() > limit or p.dtype != current[0].dtype or p.device != current[0].device):
            buckets.append(current)
            current, size = [], 0
        current.append(p)
        size += p.numel()
    if current:
        buckets.append(current)
    return buckets


_WORLD: World | None = None


def launched_ranks() -> int:
    """How many processes the launcher (torchrun, Slurm through torchrun) started: ``WORLD_SIZE``, else 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise WorldError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def init_world(device: str = "auto") -> World:
    """Join the launcher's process group once (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` set
    by torchrun): NCCL when the run is on CUDA, gloo otherwise. Returns the one-process world when not
    launched as several. Later calls return the same world."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    size = launched_ranks()
    if size <= 1:
        _WORLD = World()
        return _WORLD
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo",
                                             timeout=datetime.timedelta(minutes=60))
    _WORLD = World(rank=rank, world_size=size, local_rank=local_rank)
    return _WORLD


def current_world() -> World:
    """The world joined by :func:`init_world`, or the one-process world."""
    return _WORLD if _WORLD is not None else World()


def leave_world(finished: bool = True) -> None:
    """Leave the process group at the end of a command. A ``finished`` command first waits for every rank: gloo's
    worker threads free a finished collective's tensors after the collective returns, and a rank that raced ahead
    into interpreter shutdown would abort there (a worker thread cannot take the GIL then). A failed command does
    not wait: the other ranks may never arrive."""
    global _WORLD
    if _WORLD is not None and _WORLD.distributed and torch.distributed.is_initialized():
        if finished:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    _WORLD = None


class ShardedBackend:
    """A backend whose prompts are split over a distributed run's ranks: each rank generates its contiguous
    share and every rank gets all completions back, in order."""

    def __init__(self, backend: GenerationBackend, world: World):
        self.backend, self.world = backend, world
        self.pad_id = backend.pad_id

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, prefill: str = "",
                 num_samples: int = 1, seeds: list[int] | None = None) -> list[Generation]:
        share = self.world.share(len(prompt_ids))
        mine = None if seeds is None else seeds[share.start * num_samples: share.stop * num_samples]
        local = self.backend.generate(prompt_ids[share.start: share.stop], params, prefill, num_samples, seeds=mine)
        return self.world.gather(local)

    def sync_weights(self) -> None:
        self.backend.sync_weights()
