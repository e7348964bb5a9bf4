"""torchrun helpers: shard candidates across ranks, all-gather rewards, all-reduce factor sums.

Every function is the identity when torch.distributed is not initialised (one process).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes in the torchrun group (1 without one)."""
    return dist.get_world_size() if active() else 1


def shard(items: list) -> list:
    """This rank's strided share of ``items`` (rank r gets r, r + W, ...)."""
    if not active():
        return list(items)
    return list(items)[dist.get_rank() :: dist.get_world_size()]


def is_fsdp(model: torch.nn.Module) -> bool:
    """Whether ``model`` has FSDP2-sharded parts: their weights are all-gathered in every forward and
    backward, so every rank must run as many passes as the others (else the collectives hang)."""
    return any(type(m).__name__.startswith("FSDP") for m in model.modules())


def max_count(n: int, device: torch.device | str = "cpu") -> int:
    """The largest ``n`` over the ranks (``n`` in one process)."""
    if not active():
        return n
    t = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_rows(idx: list[int], rows: np.ndarray, n: int) -> np.ndarray:
    """Place every rank's rows (for its indices ``idx``) into one (n, ...) array, on every rank."""
    if not active():
        return rows
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (list(idx), rows))
    out = np.zeros((n,) + rows.shape[1:], dtype=rows.dtype)
    for ids, r in parts:
        out[ids] = r
    return out
