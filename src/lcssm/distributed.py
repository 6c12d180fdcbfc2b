"""Data-parallel plumbing for ``torchrun``: process-group setup from its environment variables, rank
helpers and small collectives. A plain ``python`` run is world size 1 and every helper is a no-op."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lcssm.device import resolve_device
from lcssm.errors import ConfigError

__all__ = [
    "DistInfo",
    "all_gather_object",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "env_info",
    "is_main_process",
    "setup",
    "unwrap",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a data-parallel run (world size 1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None


def env_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's RANK, WORLD_SIZE and LOCAL_RANK."""
    info = DistInfo(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise ConfigError(f"inconsistent torchrun environment: RANK={info.rank}, WORLD_SIZE={info.world_size}")
    return info


def setup(device: str | torch.device = "auto") -> tuple[DistInfo, torch.device]:
    """Resolve the training device and, under torchrun with WORLD_SIZE > 1, join the process group
    (NCCL when the device is CUDA, else gloo; ``env://`` rendezvous). Each rank uses ``cuda:LOCAL_RANK``.
    An already initialised process group is reused."""
    info = env_info()
    dev = resolve_device(device)
    if not info.enabled:
        return info, dev
    if dev.type == "cuda":
        dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    if dist.is_initialized():
        if dist.get_world_size() != info.world_size:
            raise ConfigError(f"process group has world size {dist.get_world_size()}, WORLD_SIZE says "
                              f"{info.world_size}")
    else:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://")
        atexit.register(_destroy)
    return info, dev


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run): the process that logs and writes files."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_info().rank == 0


def _active(info: DistInfo) -> bool:
    return info.enabled and dist.is_initialized()


def barrier(info: DistInfo) -> None:
    if _active(info):
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum over ranks (identity for world size 1)."""
    if _active(info):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank."""
    if not _active(info):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not _active(info):
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model
