"""Measured latency: median wall time of repeated forward passes after warm-up."""
from __future__ import annotations

import statistics
import time

import torch

from models import IGNORE_INDEX


@torch.inference_mode()
def measure_latency(model, batch_size: int, seq_len: int, device: torch.device, repeats: int = 20, warmup: int = 3) -> float:
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
