"""torch.distributed for the processes that `torchrun` starts: one place to join the group, to agree, to gather
and to leave. Every helper works unchanged in a single process (WORLD_SIZE unset or 1)."""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "launched_world",
    "join",
    "world_and_rank",
    "any_across_ranks",
    "barrier",
    "gather_objects",
    "leave",
    "parameters_identical",
]


def launched_world() -> tuple[int, int, int]:
    """(world size, rank, local rank) as torchrun set them in the environment; (1, 0, 0) without torchrun."""
    return (
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def join(use_cuda: bool) -> None:
    """Join the process group torchrun describes (NCCL with CUDA, gloo otherwise), once; it is left at exit."""
    if launched_world()[0] > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        atexit.register(leave)  # a group still open at interpreter exit aborts the process (gloo's threads)


def world_and_rank() -> tuple[int, int]:
    """(world size, rank) of the joined group, joining it first when torchrun started several processes."""
    join(torch.cuda.is_available())
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def any_across_ranks(flag: bool, device: torch.device) -> bool:
    """True on every process when `flag` is true on any of them."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    """Wait until every process gets here (nothing in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order (a one-item list in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def leave() -> None:
    """Leave the process group, if one is joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def parameters_identical(model: torch.nn.Module, world: int) -> bool:
    """Whether every process holds the same parameters (two checksums gathered from each; True for one process)."""
    if world == 1:
        return True
    flat = torch.cat([p.detach().flatten().double() for p in model.parameters()])
    checks = torch.stack([flat.sum(), (flat * torch.arange(len(flat), dtype=torch.float64, device=flat.device)).sum()])
    gathered = [torch.zeros_like(checks) for _ in range(world)]
    dist.all_gather(gathered, checks)
    return all(torch.equal(g, gathered[0]) for g in gathered)
