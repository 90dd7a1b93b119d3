"""Measured latency of several models, interleaved so that they share the machine's state fairly.

Models are timed round-robin (repeat 1 of every model, then repeat 2, ...), not one after another, so a
slow phase of the machine (another process, thermal throttling, frequency scaling) hits all of them alike.
Each figure is the median of the repeats after warm-up, with min and max beside it, and the number of
CPU threads torch used is recorded.
"""

from __future__ import annotations

import statistics
import time

import torch

from models import IGNORE_INDEX, model_cost


def timing_batch(vocab: int, batch_size: int, seq_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``batch_size`` full ``seq_len``-token sentences, one masked token each (the evaluation setting)."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, vocab, (batch_size, seq_len), generator=generator).to(device)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, seq_len // 2] = input_ids[:, seq_len // 2]
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


@torch.inference_mode()
def measure_latencies(
    models: dict, batch_size: int, seq_len: int, device: torch.device, repeats: int = 20, warmup: int = 3
) -> dict[str, dict[str, float]]:
    """Per model: ``median``, ``min`` and ``max`` milliseconds of one forward pass, models interleaved."""
    batch = timing_batch(next(iter(models.values())).config.vocab_size, batch_size, seq_len, device)
    calls = {name: (lambda model=model: model(**batch)) for name, model in models.items()}
    return measure_interleaved(calls, device, repeats, warmup)


def measure_interleaved(
    calls: dict, device: torch.device | None = None, repeats: int = 20, warmup: int = 3
) -> dict[str, dict[str, float]]:
    """Per named call (no arguments): ``median``, ``min`` and ``max`` milliseconds, the calls round-robin."""
    cuda = device is not None and device.type == "cuda"
    times: dict[str, list[float]] = {name: [] for name in calls}
    for index in range(warmup + repeats):
        for name, call in calls.items():
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            call()
            if cuda:
                torch.cuda.synchronize(device)
            if index >= warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: {"median": statistics.median(t), "min": min(t), "max": max(t)} for name, t in times.items()}


def costs_and_latencies(
    models: dict, seq_len: int, device: torch.device, repeats: int, batch_sizes=(1, 64)
) -> dict[str, dict]:
    """Per model: parameters and FLOPs per token (analytic), and for each batch size the median latency
    (``latency_ms_b{B}``) with its min and max, measured interleaved; ``threads``: torch's CPU threads."""
    values = {
        name: {**model_cost(model, seq_len), "threads": torch.get_num_threads()} for name, model in models.items()
    }
    if repeats:
        for batch_size in batch_sizes:
            for name, timing in measure_latencies(models, batch_size, seq_len, device, repeats).items():
                values[name][f"latency_ms_b{batch_size}"] = timing["median"]
                values[name][f"latency_ms_b{batch_size}_min"] = timing["min"]
                values[name][f"latency_ms_b{batch_size}_max"] = timing["max"]
    return values


def flop_reductions(models: dict, seq_len: int, reference: str = "teacher") -> dict[str, float]:
    """Per model: the ``reference`` model's encoder FLOPs per token over its own (2.0: half the compute)."""
    base = model_cost(models[reference], seq_len)["flops_per_token"]
    return {name: base / model_cost(model, seq_len)["flops_per_token"] for name, model in models.items()}


def relative_to(values: dict, reference: dict) -> dict:
    """Ratios against the teacher: parameter and FLOP ratios, measured speed-up, and how much of the FLOP
    reduction the speed-up realises (1 = all of it; below 1 = the model is slower than its FLOPs promise)."""
    ratios = {
        "parameter_ratio": values["parameters"] / reference["parameters"],
        "flop_ratio": values["flops_per_token"] / reference["flops_per_token"],
    }
    for key in [key for key in values if key.startswith("latency_ms_b") and not key.endswith(("_min", "_max"))]:
        batch = key.removeprefix("latency_ms_")
        ratios[f"speedup_{batch}"] = reference[key] / values[key]
        ratios[f"speedup_per_flop_reduction_{batch}"] = ratios[f"speedup_{batch}"] * ratios["flop_ratio"]
    return ratios
