"""The layer-merging workflow shared by retrain_merge.py and finetune_conditioned_fully_merged.py."""

from __future__ import annotations

import logging

import torch

from models import SimplifiedBert, merged_layer
from utils.args import Flags
from utils.checkpoint import RunDirectory
from utils.data import WikiTextSplits, eval_loader
from utils.errors import UserError
from utils.objectives import MergeDistillation
from utils.teacher import Teacher
from utils.teacher_cache import teacher_training_set
from utils.training import fit

log = logging.getLogger(__name__)


def merge_objective(
    teacher: Teacher,
    block: int,
    flags: Flags,
    device: torch.device,
    data: WikiTextSplits,
    prefix: SimplifiedBert | None = None,
    prefix_stop: int | None = None,
    warm_start: dict | None = None,
) -> tuple[MergeDistillation, object]:
    """The objective of the merged layer of pair ``block, block+1`` and its training set: a ``merge`` run on
    the teacher's hidden states (the store's or cache's slice, or the sentences), or with ``prefix`` a
    ``conditioned`` run on the outputs of its first ``prefix_stop`` layers (see
    :class:`utils.objectives.MergeDistillation`). Starts from ``--merge_init`` or the state dict ``warm_start``."""
    student = flags.student
    try:
        layer = merged_layer(
            teacher.model,
            block,
            student.block_heads,
            student.block_d_k,
            flags.dropout.block_dropout,
            flags.merge.merge_init,
            flags.merge.merge_ffn_width,
        )
    except ValueError as error:  # --merge_init average of layers whose shape is not the student's
        raise UserError(f"--merge_init {flags.merge.merge_init}: {error}") from None
    if warm_start is not None:
        layer.load_state_dict(warm_start)
        log.info("merged layer %d-%d warm-started from a retrain_merge checkpoint", block, block + 1)
    layer.to(device)
    objective = MergeDistillation(teacher.model, block, layer, prefix, prefix_stop, teacher.has_mlm_head, device)
    train_set = data.train
    if not objective.conditioned:  # the teacher cache holds the teacher's own inputs: not a conditioned prefix's
        train_set = teacher_training_set(flags, teacher, "merge", block, objective.signal, data.train, device)
    return objective, train_set


def train_merged_layer(
    teacher: Teacher,
    block: int,
    flags: Flags,
    device: torch.device,
    data: WikiTextSplits,
    run: RunDirectory,
    prefix: SimplifiedBert | None = None,
    prefix_stop: int | None = None,
    warm_start: dict | None = None,
) -> list[dict]:
    """Train (or resume) the merged layer of :func:`merge_objective` in ``run``; returns the metric records."""
    objective, train_set = merge_objective(teacher, block, flags, device, data, prefix, prefix_stop, warm_start)
    valid = eval_loader(data.validation, flags.training.batch_size, flags.training.eval_sentences)
    return fit(objective, train_set, valid, flags.training, run, device, flags.data.seed)
