"""Training compute, counted: the FLOPs a run spends (forward and backward of what it trains, and every teacher
forward it computes; a teacher store's values cost none where they are read), from the shapes of the operations
it runs, so that models can be compared at equal training compute as well as at equal inference FLOPs.

The count is torch's own (:class:`torch.utils.flop_counter.FlopCounterMode`: matrix products and attention, forward
and backward, at the shapes they ran), taken on the first batch of each epoch, divided by that batch's padded tokens
and charged to every batch of the epoch by its own padded tokens (batch x its length). Counting every batch would
cost a Python dispatch per operation; the first batch's rate misses only how attention grows with a longer batch,
which is under 3% of a layer's FLOPs at 40 tokens and hidden 384 (4 T H of about 24 H^2 per token).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

from utils.files import atomic_write

FLOPS_FILE = "SITRA_FLOPS_FILE"  # set by the workflow: the stage's file every run it trains adds its FLOPs to


# torch counts the GPU's fused attention kernels but not the CPU's: the same formulas, for the CPU's kernel
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
def _cpu_attention(query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(query.shape, key.shape, value.shape)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
def _cpu_attention_backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def padded_tokens(batch: dict) -> int:
    """The positions a batch computes on: sentences x the batch's length (padding included: it is computed)."""
    return int(batch["attention_mask"].numel())


class FlopRate:
    """FLOPs per padded token of one part of a step (a member's step, or the teacher forward members share),
    measured on an epoch's first batch (:meth:`measure`) and charged to each batch after (:meth:`charge`)."""

    def __init__(self):
        self.per_token: float | None = None

    @contextlib.contextmanager
    def measure(self, batch: dict, now: bool):
        """Count what runs inside on ``batch`` when ``now`` (an epoch's first batch); otherwise count nothing."""
        if not now:
            yield
            return
        with FlopCounterMode(display=False) as counter:
            yield
        self.per_token = counter.get_total_flops() / max(padded_tokens(batch), 1)

    def charge(self, batch: dict) -> float:
        """The FLOPs of ``batch`` at the measured rate (0 before any measurement)."""
        return (self.per_token or 0.0) * padded_tokens(batch)


def add_to_stage(run: str, epoch: int, flops: float, shared: float) -> None:
    """Record an epoch's FLOPs in the stage's file (``$SITRA_FLOPS_FILE``; the workflow sets it), keyed by run folder
    and epoch: an epoch trained again (a run retrained after its folder was removed) replaces its entry, a continued
    run adds its new epochs. ``shared``: the part that was a teacher forward shared in lockstep, charged to every
    run that shared it (its cost alone), computed once (:func:`stage_flops`)."""
    path = os.environ.get(FLOPS_FILE)
    if not path:
        return
    path = Path(path)  # one stage is one process (under torchrun, its rank 0 alone writes)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = json.loads(path.read_text()) if path.exists() else {}
    table.setdefault(run, {})[str(epoch)] = {"train_flops": flops, "shared_flops": shared}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(table, indent=1, sort_keys=True)))


def run_flops(epochs: dict[str, dict]) -> float:
    """A run's training FLOPs, as it would cost alone, from its entry in a stage's file (epoch -> its FLOPs)."""
    return sum(epoch["train_flops"] for epoch in epochs.values())


def stage_flops(table: dict[str, dict]) -> float:
    """What a stage computed: each run's own FLOPs, and the teacher forwards its runs shared once (per epoch, the
    most any run was charged: the shared forward ran while any of them trained)."""
    epochs = {epoch for runs in table.values() for epoch in runs}
    shared = sum(max(runs.get(epoch, {}).get("shared_flops", 0.0) for runs in table.values()) for epoch in epochs)
    entries = [entry for runs in table.values() for entry in runs.values()]
    own = sum(entry["train_flops"] - entry.get("shared_flops", 0.0) for entry in entries)
    return own + shared
