"""The teacher's signal for a trained module: its input and its target, computed or read from a store.

Objectives never ask where a batch came from: they call their :class:`TeacherSignal`. A batch read from
a store of the teacher's activations (:mod:`utils.teacher_cache`) carries both tensors under
:data:`STORED_INPUT` / :data:`STORED_TARGET`; any other batch holds sentences, and the frozen teacher
computes them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

STORED_INPUT = "teacher_input"
STORED_TARGET = "teacher_target"

Signal = tuple[torch.Tensor, torch.Tensor]


class TeacherSignal:
    """``signal(batch) -> (input, target)``, each [B, T, H] (fp32)."""

    def __init__(self, compute: Callable[[dict], Signal]):
        self.compute = compute  # from sentences: input_ids, attention_mask [B, T]

    def __call__(self, batch: dict) -> Signal:
        if STORED_INPUT in batch:
            return batch[STORED_INPUT].float(), batch[STORED_TARGET].float()
        return self.compute(batch)
