"""Training runs by kind: each knows its folder (from :mod:`utils.storage`) and its identity, the values
a checkpoint must share with the flags to be resumed. Nothing else builds a run's name or identity."""

from __future__ import annotations

from pathlib import Path

from utils.args import Flags
from utils.checkpoint import RunDirectory
from utils.distributed import init_distributed
from utils.storage import Storage
from utils.teacher import TeacherInfo


def open_run(flags: Flags, folder: Path, identity: dict) -> RunDirectory:
    """The run at ``folder``; every flag is recorded with its checkpoints (for the reader, not checked)."""
    return RunDirectory(folder, identity, flags.training.save_checkpoint_every, flags.as_dict())


def already_finished(run: RunDirectory, flags: Flags, output: Path | None = None) -> bool:
    """:meth:`RunDirectory.prepare` with the training flags (before anything is loaded): True when the run
    is already finished (and its ``output``, if it saves one, exists), so the script has nothing to do."""
    training = flags.training
    finished = run.prepare(training.epochs, training.max_steps, training.no_resume, init_distributed().is_main)
    return finished and (output is None or output.exists())


def _teacher_identity(teacher: TeacherInfo) -> dict:
    """The teacher by path and by content: the same weights elsewhere resume, other weights here do not."""
    return {"teacher": teacher.name, "teacher_fingerprint": teacher.fingerprint}


def _block_identity(flags: Flags, teacher: TeacherInfo, block: int) -> dict:
    """What every run training a module for one block (or pair) must share with its checkpoint."""
    student = flags.student
    return {
        **_teacher_identity(teacher),
        "block": block,
        "block_heads": student.block_heads,
        "block_d_k": student.block_d_k,
        "seq_len": flags.data.seq_len,
    }


def _block_folder(flags: Flags, kind: str, block: int) -> Path:
    return Storage(flags.storage.storage_directory).block_run(
        kind, block, flags.student.block_heads, flags.student.block_d_k
    )


def block_run(flags: Flags, teacher: TeacherInfo, block: int) -> RunDirectory:
    """retrain_single_block.py: one student attention distilled on layer ``block``."""
    distillation = flags.distillation
    identity = {
        **_block_identity(flags, teacher, block),
        "criterion": distillation.criterion,
        "loss_on_logits": distillation.loss_on_logits,
        "loss_on_scores": distillation.loss_on_scores,
        "cache_teacher": flags.cache.epoch_one_masks,
    }
    return open_run(flags, _block_folder(flags, "block", block), identity)


def till_end_run(flags: Flags, teacher: TeacherInfo, block: int) -> RunDirectory:
    """train_block_till_end.py: the student attention of ``block`` trained on the teacher's outputs."""
    return open_run(flags, _block_folder(flags, "till_end", block), _block_identity(flags, teacher, block))


def merge_run(flags: Flags, teacher: TeacherInfo, block: int, kind: str) -> RunDirectory:
    """retrain_merge.py (``kind`` merge) and finetune_conditioned_fully_merged.py (``conditioned``): the
    merged layer of pair ``block, block+1`` (only the unconditioned merge offers --cache_teacher)."""
    identity = {
        **_block_identity(flags, teacher, block),
        "merge_init": flags.merge.merge_init,
        "cache_teacher": kind == "merge" and flags.cache.epoch_one_masks,
    }
    return open_run(flags, _block_folder(flags, kind, block), identity)


def finetune_run(flags: Flags, teacher: TeacherInfo, model_name: str, **model_identity) -> RunDirectory:
    """End-to-end finetuning of the saved model ``model_name`` (``model_identity``: what else defines it)."""
    identity = {**_teacher_identity(teacher), "model": model_name, "seq_len": flags.data.seq_len, **model_identity}
    return open_run(flags, Storage(flags.storage.storage_directory).run(f"finetune_{model_name}"), identity)


def teacher_run(flags: Flags, init: TeacherInfo) -> RunDirectory:
    """train_teacher.py: MLM training of the teacher started from ``init``."""
    identity = {
        "init": init.name,
        "init_fingerprint": init.fingerprint,
        "seq_len": flags.data.seq_len,
        "mlm_probability": flags.teacher_training.mlm_probability,
    }
    return open_run(flags, Storage(flags.storage.storage_directory).run("teacher"), identity)
