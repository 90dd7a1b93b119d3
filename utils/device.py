"""Where tensors live and in which precision: device choice, autocast, moving batches."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # --precision: auto is bf16 on a GPU, fp32 on the CPU


def pick_device(requested: str | None = None, local_rank: int = 0) -> torch.device:
    """``requested``, else this process's GPU (``cuda:LOCAL_RANK`` under torchrun) when there is one, else the CPU."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast(device: torch.device, precision: str):
    """Mixed precision on GPUs (bf16 by default); full fp32 on the CPU unless asked otherwise."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
