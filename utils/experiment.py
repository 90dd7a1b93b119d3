"""Start-up shared by the scripts: logging, seeding, device."""

from __future__ import annotations

import logging

import datasets
import torch
import transformers

from utils.args import Flags
from utils.device import pick_device
from utils.distributed import init_distributed

log = logging.getLogger("sitra")


def start(flags: Flags, seed: int = 0) -> torch.device:
    """Configure logging, seed torch, pick the device (``--device``, else the GPU when there is one)."""
    world = init_distributed()
    level = logging.INFO if world.is_main else logging.WARNING  # under torchrun, rank 0 speaks for all
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    transformers.logging.set_verbosity_warning()
    datasets.disable_progress_bars()
    torch.manual_seed(seed)
    device = pick_device(flags.runtime.device, world.local_rank)
    log.info("device %s; flags: %s", device, flags.command_line())
    return device
