"""Start-up shared by the scripts: logging, seeding, device, run folders."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import datasets
import torch
import transformers

from utils.checkpoint import RunDirectory
from utils.distributed import init_distributed
from utils.training import pick_device

log = logging.getLogger("sitra")

DATASET_NAME = "wikitext2"


def start(args: argparse.Namespace) -> torch.device:
    """Configure logging, seed torch, pick the device (GPU when there is one)."""
    world = init_distributed()
    level = logging.INFO if world.is_main else logging.WARNING  # under torchrun, rank 0 speaks for all
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    transformers.logging.set_verbosity_warning()
    datasets.disable_progress_bars()
    torch.manual_seed(getattr(args, "seed", 0))
    device = pick_device(getattr(args, "device", None), world.local_rank)
    log.info("device %s; flags: %s", device, " ".join(f"--{key} {value}" for key, value in vars(args).items()))
    return device


def checkpoint_root(storage_directory: str | Path) -> Path:
    return Path(storage_directory) / "checkpoints" / DATASET_NAME


def run_directory(args: argparse.Namespace, name: str, identity: dict) -> RunDirectory:
    """``{storage_directory}/checkpoints/wikitext2/{name}/`` for a run whose ``identity`` must match to resume."""
    flags = {key: value for key, value in vars(args).items() if isinstance(value, (int, float, str, bool, type(None)))}
    return RunDirectory(checkpoint_root(args.storage_directory) / name, identity, args.save_checkpoint_every, flags)


def block_run_name(kind: str, block: int, d_k: int, heads: int) -> str:
    """Run folder names of the seed: ``block_{b}_{d_k}_{heads}``, ``merge_{b}_{d_k}_{heads}``..."""
    return f"{kind}_{block}_{d_k}_{heads}"


def retrained_model_dir(storage_directory: str | Path, heads: int, d_k: int) -> Path:
    """Where the notebook saves the assembled retrained model."""
    return Path(storage_directory) / "models" / f"retrained_{d_k}_{heads}"


def merged_model_dir(storage_directory: str | Path, heads: int, d_k: int, source: str = "merge") -> Path:
    """Where finetune_fully_merged.py saves the fully merged model."""
    suffix = "" if source == "merge" else f"_{source}"
    return Path(storage_directory) / "models" / f"merged_{d_k}_{heads}{suffix}"


LAYER_DROP_MODEL = "layer_drop"
