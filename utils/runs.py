"""Training runs by kind: each knows its folder (from :mod:`utils.storage`) and its identity, the values
a checkpoint must share with the flags to be resumed. Nothing else builds a run's name or identity."""

from __future__ import annotations

from pathlib import Path

from utils.args import Flags
from utils.checkpoint import RunDirectory
from utils.storage import Storage


def open_run(flags: Flags, folder: Path, identity: dict) -> RunDirectory:
    """The run at ``folder``; every flag is recorded with its checkpoints (for the reader, not checked)."""
    return RunDirectory(folder, identity, flags.training.save_checkpoint_every, flags.as_dict())


def _block_identity(flags: Flags, teacher_name: str, block: int) -> dict:
    """What every run training a module for one block (or pair) must share with its checkpoint."""
    student = flags.student
    return {
        "teacher": teacher_name,
        "block": block,
        "block_heads": student.block_heads,
        "block_d_k": student.block_d_k,
        "seq_len": flags.data.seq_len,
    }


def _block_folder(flags: Flags, kind: str, block: int) -> Path:
    return Storage(flags.storage.storage_directory).block_run(
        kind, block, flags.student.block_heads, flags.student.block_d_k
    )


def block_run(flags: Flags, teacher_name: str, block: int) -> RunDirectory:
    """retrain_single_block.py: one student attention distilled on layer ``block``."""
    distillation = flags.distillation
    identity = {
        **_block_identity(flags, teacher_name, block),
        "criterion": distillation.criterion,
        "loss_on_logits": distillation.loss_on_logits,
        "loss_on_scores": distillation.loss_on_scores,
        "cache_teacher": flags.cache.cache_teacher,
    }
    return open_run(flags, _block_folder(flags, "block", block), identity)


def till_end_run(flags: Flags, teacher_name: str, block: int) -> RunDirectory:
    """train_block_till_end.py: the student attention of ``block`` trained on the teacher's outputs."""
    return open_run(flags, _block_folder(flags, "till_end", block), _block_identity(flags, teacher_name, block))


def merge_run(flags: Flags, teacher_name: str, block: int, kind: str, cache_teacher: bool) -> RunDirectory:
    """retrain_merge.py (``kind`` merge) and finetune_conditioned_fully_merged.py (``conditioned``): the
    merged layer of pair ``block, block+1``."""
    identity = {
        **_block_identity(flags, teacher_name, block),
        "merge_init": flags.merge.merge_init,
        "cache_teacher": cache_teacher,
    }
    return open_run(flags, _block_folder(flags, kind, block), identity)


def finetune_run(flags: Flags, teacher_name: str, model_name: str, **model_identity) -> RunDirectory:
    """End-to-end finetuning of the saved model ``model_name`` (``model_identity``: what else defines it)."""
    identity = {"teacher": teacher_name, "model": model_name, "seq_len": flags.data.seq_len, **model_identity}
    return open_run(flags, Storage(flags.storage.storage_directory).run(f"finetune_{model_name}"), identity)


def teacher_run(flags: Flags, init_name: str) -> RunDirectory:
    """train_teacher.py: MLM training of the teacher started from ``init_name``."""
    identity = {
        "init": init_name,
        "seq_len": flags.data.seq_len,
        "mlm_probability": flags.teacher_training.mlm_probability,
    }
    return open_run(flags, Storage(flags.storage.storage_directory).run("teacher"), identity)
