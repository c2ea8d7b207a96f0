"""Fully sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``) for models that do not fit on
one device with their gradients and optimiser state.

With ``fsdp=true`` under torchrun, every decoder layer and then the whole model are sharded over the run's
processes: each rank keeps 1/N of every weight, gradient and AdamW moment; a layer's weights are gathered for
its forward and backward and freed after; gradients are summed over ranks by reduce-scatter (the losses are
already normalised by the global counts, as in plain data parallelism). What changes for the trainers:

    forward and backward        collectives: every rank must run the same number of them, so a rank with fewer
                                micro-batches runs a masked (zero-loss) one -- ``pad_to_equal``
    generation                  the weights are gathered once (``full_weights``) and each rank then decodes its
                                own prompts without talking to the others (ranks stop at different steps)
    checkpoints                 the full state is gathered to rank 0 and written in the same files as an
                                unsharded run's, so a checkpoint loads on any number of ranks, sharded or not

Names of parameters and state-dict keys are the unsharded model's (FSDP2 keeps them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

import torch

from aha.run.world import World

T = TypeVar("T")


def shard_model(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """Shard ``model`` over the run's ranks: each transformer block (the classes in the model's
    ``_no_split_modules``) is one unit, the rest (embeddings, final norm, head) the root unit. Gradients are
    summed over ranks, not averaged."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (world.world_size,))
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise ValueError(f"fsdp: cannot find the transformer blocks of {type(model).__name__} (its "
                         "_no_split_modules is empty); shard only models whose blocks transformers names")
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for unit in units(model):
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    return model


def units(model: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: torch.nn.Module | None) -> bool:
    return model is not None and bool(units(model))


@contextlib.contextmanager
def full_weights(model: torch.nn.Module) -> Iterator[None]:
    """The whole model's weights on every rank for the duration (gathered once), so that each rank can run
    forwards on its own -- decoding its share of the prompts, any number of steps -- with no collective.
    Called by every rank at the same point; a no-op for an unsharded model."""
    fsdp_units = units(model)
    if not fsdp_units:
        yield
        return
    for unit in fsdp_units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in fsdp_units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def pad_to_equal(items: list[T], world: World, filler: T | None) -> list[T]:
    """This rank's ``items`` padded with ``filler`` to the largest count any rank has, so that every rank runs
    the same number of sharded forwards (``filler`` must contribute nothing: a fully masked micro-batch)."""
    most = int(max(world.gather([len(items)])))
    if most > len(items) and filler is None:
        raise ValueError("pad_to_equal: this rank has fewer items than another and no filler")
    return list(items) + [filler] * (most - len(items))  # type: ignore[list-item]


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict, on the CPU of rank 0 (empty on the others), a tied weight once (under its first
    name, as ``save_pretrained`` writes it). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            state.pop(name, None)
        seen.add(id(param))
    return state


def load_full_state(model: torch.nn.Module, state: dict[str, torch.Tensor], strict: bool = True):
    """Load an unsharded state dict (read by every rank) into a sharded model: each rank keeps its shard.
    Returns (missing keys, unexpected keys) as ``load_state_dict`` does."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    return set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=strict))


def trained_names(model: torch.nn.Module) -> list[str]:
    """Names of the trained parameters, in the order the optimiser holds them (built from parameters())."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's unsharded state in ``optimizer.state_dict()``'s own layout (parameters numbered in the
    optimiser's order), on rank 0 (empty on the others), so that an unsharded run loads it unchanged.
    Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    named = get_optimizer_state_dict(model, optimizer,
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not named.get("state") and not named.get("param_groups"):
        return {}
    index = {name: i for i, name in enumerate(trained_names(model))}
    return {"state": {index[name]: value for name, value in named["state"].items()},
            "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                             for group in named["param_groups"]]}


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict[str, Any]) -> None:
    """Load ``optimizer.state_dict()``-layout state (as an unsharded run or :func:`full_optimizer_state` wrote
    it, read by every rank) into the optimiser of a sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = trained_names(model)
    named = {"state": {names[i]: value for i, value in state["state"].items()},
             "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                              for group in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))
