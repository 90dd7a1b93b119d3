"""Measured latency: median wall time of repeated forward passes after warm-up."""

from __future__ import annotations

import statistics
import time

import torch

from models import IGNORE_INDEX, model_cost


@torch.inference_mode()
def measure_latency(
    model, batch_size: int, seq_len: int, device: torch.device, repeats: int = 20, warmup: int = 3
) -> float:
    """Median milliseconds of one forward pass on ``batch_size`` full ``seq_len``-token sentences,
    one masked token each (the evaluation setting)."""
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    input_ids = torch.randint(1000, vocab, (batch_size, seq_len), generator=generator).to(device)
    attention_mask = torch.ones_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, seq_len // 2] = input_ids[:, seq_len // 2]
    times = []
    for index in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(input_ids, attention_mask, labels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def cost_and_latency(model, seq_len: int, device: torch.device, repeats: int, batch_sizes=(1, 64)) -> dict:
    """Parameters and FLOPs per token (analytic) and median latency per batch size (measured)."""
    values = model_cost(model, seq_len)
    if repeats:
        for batch_size in batch_sizes:
            values[f"latency_ms_b{batch_size}"] = measure_latency(model, batch_size, seq_len, device, repeats=repeats)
    return values


def relative_to(values: dict, reference: dict) -> dict:
    """Ratios against the teacher: parameter and FLOP ratios, measured speed-up, and how much of the FLOP
    reduction the speed-up realises (1 = all of it; below 1 = the model is slower than its FLOPs promise)."""
    ratios = {
        "parameter_ratio": values["parameters"] / reference["parameters"],
        "flop_ratio": values["flops_per_token"] / reference["flops_per_token"],
    }
    for key in [key for key in values if key.startswith("latency_ms_b")]:
        batch = key.removeprefix("latency_ms_")
        ratios[f"speedup_{batch}"] = reference[key] / values[key]
        ratios[f"speedup_per_flop_reduction_{batch}"] = ratios[f"speedup_{batch}"] * ratios["flop_ratio"]
    return ratios
