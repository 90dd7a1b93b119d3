"""Training runs by kind: each knows its folder (from :mod:`utils.storage`) and its identity, the values a
checkpoint must share with the flags to be resumed. Both derive from one declaration,
:mod:`utils.identity`: every flag of the script is identity unless declared neutral or continuable, and
the named ones that differ from their default add a suffix to the folder name. Nothing else builds a
run's name or identity."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from utils.args import (
    DistillationArguments,
    FeedForwardArguments,
    Flags,
    InitFromArguments,
    MergeArguments,
    OutputDistillationArguments,
    StudentInitArguments,
    parse_args,
)
from utils.checkpoint import RunDirectory
from utils.device import device_type, resolve_precision
from utils.distributed import init_distributed
from utils.errors import UserError
from utils.identity import CONTINUABLE, NAMED, run_identity, variant
from utils.run_state import plateaued
from utils.storage import Storage
from utils.teacher import TeacherInfo

# The flag groups that name each block-run kind's variants: what a script that reads those runs (assembly,
# evaluation, the conditioned chain, finetuning of the merged model) takes to find the run a flag set made.
# tests/test_identity.py checks them against the training scripts' own groups.
VARIANT_GROUPS = {
    "block": (StudentInitArguments, DistillationArguments, FeedForwardArguments),
    "till_end": (InitFromArguments, OutputDistillationArguments),
    "merge": (MergeArguments,),
    "conditioned": (MergeArguments,),
}
VARIANT_GROUPS["ffn"] = VARIANT_GROUPS["block"]  # feed-forward students come from the same script and flags


def run_variant(flags: Flags, kind: str) -> str:
    """The folder-name suffix of the ``kind`` block runs these flags ask for (``""`` for the defaults)."""
    return variant([group for group in flags.groups if isinstance(group, VARIANT_GROUPS[kind])])


def variant_of_command_line(kind: str, command_line: str) -> str:
    """:func:`run_variant` of the flags in ``command_line`` (as the ``kind`` runs were trained with, e.g.
    ``"--criterion CrossEntropy --loss_on_logits"``); flags of other groups are an error. For the notebook."""
    return run_variant(parse_args(list(VARIANT_GROUPS[kind]), "", shlex.split(command_line)), kind)


def variant_of_flags(kind: str, values: dict) -> str:
    """:func:`run_variant` of flag values by name, as the ``kind`` runs were trained with (a recipe's or a study's
    structured fields, e.g. ``{"student_init": "heads"}``; flags left out keep their default); a flag no group
    of ``kind`` declares is a one-line error."""
    groups = VARIANT_GROUPS[kind]
    declared = {group: {field.name for field in dataclasses.fields(group)} for group in groups}
    unknown = sorted(set(values) - set().union(*declared.values()))
    if unknown:
        known = ", ".join(sorted(name for names in declared.values() for name in names if name in NAMED))
        raise UserError(f"{kind} runs take no flag {', '.join(unknown)} (their variant flags: {known})")
    return variant([group(**{k: v for k, v in values.items() if k in declared[group]}) for group in groups])


def open_run(flags: Flags, folder: Path, **explicit) -> RunDirectory:
    """The run at ``folder``: its identity is every identity flag (``explicit`` values replace or add; the precision
    concrete, never ``auto``), every flag is recorded with its checkpoints, and the continuable ones are checked when
    a finished run is rerun."""
    continuable = {key: value for key, value in flags.as_dict().items() if key in CONTINUABLE}
    identity = run_identity(flags.groups, **explicit)
    kind = device_type(getattr(getattr(flags, "runtime", None), "device", None))
    if identity.get("precision") == "auto":  # utils.experiment.start resolves it; flags that skipped it, here
        identity["precision"], _ = resolve_precision(kind, "auto")
    return RunDirectory(folder, identity, flags.training.save_checkpoint_every, flags.as_dict(), continuable)


def already_finished(run: RunDirectory, flags: Flags, output: Path | None = None) -> bool:
    """:meth:`RunDirectory.prepare` with the training flags (before anything is loaded): True when the run
    is already finished (and its ``output``, if it saves one, exists), so the script has nothing to do."""
    training = flags.training

    def stopped_early(checkpoint: dict) -> bool:
        return plateaued(checkpoint.get("validation_losses", []), training.stop_patience, training.stop_min_delta)

    is_main = init_distributed().is_main
    finished = run.prepare(training.epochs, training.max_steps, training.no_resume, is_main, stopped_early)
    return finished and (output is None or output.exists())


def _teacher_identity(teacher: TeacherInfo) -> dict:
    """The teacher by path and by content: the same weights elsewhere resume, other weights here do not."""
    return {"teacher": teacher.name, "teacher_fingerprint": teacher.fingerprint}


def _block_folder(flags: Flags, kind: str, block: int) -> Path:
    """``{kind}_{block}_{d_k}_{heads}`` and the suffix of every named flag of the script off its default."""
    student = flags.student
    return Storage(flags.storage.storage_directory).block_run(
        kind, block, student.block_heads, student.block_d_k, variant(flags.groups)
    )


def block_run(flags: Flags, teacher: TeacherInfo, block: int) -> RunDirectory:
    """retrain_single_block.py: one student attention distilled on layer ``block``."""
    return open_run(
        flags,
        _block_folder(flags, "block", block),
        **_teacher_identity(teacher),
        block=block,
        cache_teacher=flags.cache.epoch_one_masks,
    )


def ffn_run(flags: Flags, teacher: TeacherInfo, block: int) -> RunDirectory:
    """retrain_single_block.py --part ffn: one student feed-forward of width ``--ffn_width`` distilled on layer
    ``block``."""
    width = flags.feed_forward.ffn_width[0]
    folder = Storage(flags.storage.storage_directory).ffn_run(block, width, variant(flags.groups))
    return open_run(flags, folder, **_teacher_identity(teacher), block=block, cache_teacher=flags.cache.epoch_one_masks)


def till_end_run(flags: Flags, teacher: TeacherInfo, block: int, init_checkpoint: str) -> RunDirectory:
    """train_block_till_end.py: the student attention of ``block`` trained on the teacher's outputs, started
    from ``init_checkpoint`` (what --init_from resolved to: a checkpoint path or 'none')."""
    folder = _block_folder(flags, "till_end", block)
    return open_run(flags, folder, **_teacher_identity(teacher), block=block, init_checkpoint=init_checkpoint)


def merge_run(flags: Flags, teacher: TeacherInfo, block: int, kind: str, **start) -> RunDirectory:
    """retrain_merge.py (``kind`` merge) and finetune_conditioned_fully_merged.py (``conditioned``): the
    merged layer of pair ``block, block+1`` (only the unconditioned merge offers --cache_teacher); ``start``:
    where a conditioned layer starts from (its merge run's checkpoint or 'none')."""
    epoch_one_masks = kind == "merge" and flags.cache.epoch_one_masks
    folder = _block_folder(flags, kind, block)
    identity = {**_teacher_identity(teacher), "block": block, "cache_teacher": epoch_one_masks, **start}
    return open_run(flags, folder, **identity)


def finetune_run(flags: Flags, teacher: TeacherInfo, model_name: str, **model_identity) -> RunDirectory:
    """End-to-end finetuning that saves the model ``model_name`` (``model_identity``: what else defines it)."""
    folder = Storage(flags.storage.storage_directory).run(f"finetune_{model_name}")
    return open_run(flags, folder, **_teacher_identity(teacher), **model_identity)


def learned_masks_run(flags: Flags, teacher: TeacherInfo, model_name: str) -> RunDirectory:
    """prune_cofi.py: the masks (and weights) learned for the model ``model_name`` (``masks_{model_name}``; its
    healing, a finetune run, comes after)."""
    folder = Storage(flags.storage.storage_directory).run(f"masks_{model_name}")
    return open_run(flags, folder, **_teacher_identity(teacher))


def teacher_run(flags: Flags, init: TeacherInfo) -> RunDirectory:
    """train_teacher.py: MLM training of the teacher started from ``init``."""
    folder = Storage(flags.storage.storage_directory).run("teacher")
    return open_run(flags, folder, init=init.name, init_fingerprint=init.fingerprint)
