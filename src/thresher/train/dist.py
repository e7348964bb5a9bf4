"""One init/teardown path for CPU, one GPU and torchrun (DDP on gloo/nccl, optional FSDP2)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from thresher.train.config import DEVICE_PATTERN
from thresher.utils.errors import ThresherError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def is_dist(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> Dist:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; join (or reuse) the process group when world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    m = re.fullmatch(DEVICE_PATTERN, device)
    if m is None:
        raise ThresherError(f"train.device must be auto, cpu, cuda or cuda:N, got {device!r}")
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ThresherError(f"train.device is {device!r} but no CUDA device is visible")
    index = local
    if m.group(1) is not None:  # "cuda:N": one named GPU, a single process only
        if world > 1:
            raise ThresherError(f"train.device={device!r} names one GPU; under torchrun use 'cuda' (LOCAL_RANK's)")
        index = int(m.group(1))
        if index >= torch.cuda.device_count():
            raise ThresherError(f"train.device={device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    dev = torch.device("cuda", index) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
        owns = True
    return Dist(rank, world, local, dev, owns)


def teardown(d: Dist) -> None:
    if d.owns_group and tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.is_dist:
        x = x.clone()
        tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
        x /= d.world
    return x


def barrier(d: Dist) -> None:
    if d.is_dist:
        tdist.barrier()


def wrap_model(model: torch.nn.Module, d: Dist, fsdp: bool = False) -> torch.nn.Module:
    """DDP (or FSDP2 with one shard unit per decoder layer) under torchrun; the model itself otherwise."""
    if not d.is_dist:
        return model
    if fsdp:
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # FSDP2's public API: torch >= 2.6
            raise ThresherError(f"train.fsdp needs torch >= 2.6 (FSDP2's fully_shard); this is torch "
                                f"{torch.__version__}: upgrade it, or set train.fsdp = false for DDP") from None
        if d.device.type == "cpu" and _torch_version() < (2, 7):  # 2.6's FSDP2 has no CPU (gloo) streams
            raise ThresherError(f"train.fsdp on CPU needs torch >= 2.7; this is torch {torch.__version__}: "
                                "upgrade it, or set train.fsdp = false for DDP")

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)
