"""Where tensors live and in which precision: device choice, autocast, moving batches."""

from __future__ import annotations

import contextlib

import torch

# --precision: auto is bf16 autocast where the hardware multiplies bf16 natively (a GPU, a CPU with AVX512-BF16 or
# AMX), fp32 elsewhere; resolve_precision makes it concrete once per run, and the run's identity records that.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def device_type(requested: str | None = None) -> str:
    """The type of the device :func:`pick_device` gives for ``requested`` (``cuda`` or ``cpu``), without choosing it."""
    if requested:
        return torch.device(requested).type
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_device(requested: str | None = None, local_rank: int = 0) -> torch.device:
    """``requested``, else this process's GPU (``cuda:LOCAL_RANK`` under torchrun) when there is one, else the CPU."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 AVX512-BF16 or AMX-BF16, ARM BF16), from torch's own CPU
    capability query; False where this torch cannot tell (older than 2.13: fp32, as before). Tests patch it."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is None:
        return False
    capabilities = get_capabilities()
    return any(bool(capabilities.get(name)) for name in ("avx512_bf16", "amx_bf16", "bf16"))


def resolve_precision(device: torch.device | str, requested: str) -> tuple[str, str]:
    """The concrete precision (fp32, bf16 or fp16) of ``requested`` on ``device``, and why. ``auto`` is bf16
    autocast (fp32 master weights and optimizer state) on a GPU and on a CPU that multiplies bf16 natively, where a
    bf16 matmul runs about 4x faster than fp32 (1024x1024 on a 2-core AVX512-BF16 EPYC: 8.4 ms against 35.6); fp32
    on other CPUs, where bf16 is emulated and slower than fp32."""
    if requested != "auto":
        return requested, "asked for"
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16", "auto: a GPU"
    if kind == "cpu" and cpu_multiplies_bf16():
        return "bf16", "auto: this CPU multiplies bf16 natively"
    return "fp32", "auto: this CPU does not multiply bf16 natively" if kind == "cpu" else f"auto: fp32 on {kind}"


def auto_as_recorded(checkpoint: dict) -> str:
    """What a run that recorded ``--precision auto`` in its identity (before auto was resolved once per run) trained
    in: bf16 on a GPU, fp32 on every CPU (CPUs with native bf16 got fp32 then too), told by the checkpoint itself (its
    RNG state holds the GPU's where one was there). How such a checkpoint is read
    (:func:`utils.checkpoint.check_identity`): it resumes only in the precision it trained in."""
    return "bf16" if "cuda" in (checkpoint.get("rng") or {}) else "fp32"


def autocast(device: torch.device, precision: str):
    """Autocast to the precision :func:`resolve_precision` makes of ``precision`` (nothing for fp32). Weights,
    gradients and optimizer state stay fp32: only the forward's matmuls run in bf16 (or fp16)."""
    precision, _ = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
