"""torchrun / DistributedDataParallel support.

Under ``torchrun --nproc_per_node N`` (RANK, WORLD_SIZE, LOCAL_RANK set) every script joins a process
group: NCCL on GPUs, gloo on CPU. Each process takes its share of every global batch
(:func:`utils.data.epoch_batches`); only rank 0 logs metrics and writes checkpoints.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over processes (a copy; the input is unchanged)."""
        value = value.detach().clone()
        if self.enabled:
            dist.all_reduce(value)
        return value

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process when it is True on one (so all stop at the same step)."""
        return bool(self.sum(torch.tensor(float(flag), device=device)).item() > 0)


def init_distributed(device: torch.device | None = None) -> Distributed:
    """Join the process group torchrun describes; a single process when it describes none."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and (device is None or device.type == "cuda") else "gloo"
        dist.init_process_group(backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
