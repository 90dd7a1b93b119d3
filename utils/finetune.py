"""End-to-end finetuning of a simplified model by distillation on the teacher's MLM outputs, then saving it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from models import DROP, SimplifiedBert, assemble, layers_to_drop, parameter_count
from models.methods import SIMILARITY
from utils.args import Flags
from utils.checkpoint import RunDirectory
from utils.data import WikiTextSplits, eval_loader
from utils.errors import Diverged
from utils.lockstep import fit_together
from utils.metrics import hidden_state_similarity
from utils.model_io import load_simplified, save_and_export
from utils.objectives import HEALING, TEACHER_OUTPUTS
from utils.run_state import Member, finished_training
from utils.teacher import Teacher
from utils.training import fit, make_optimizer

log = logging.getLogger(__name__)


def layer_drop_identity(rule: str, training) -> dict:
    """What a layer-drop run's identity holds beyond its flags: a rule that drops by the hidden states' similarities
    chooses its layers on ``--eval_sentences`` validation sentences, a flag neutral elsewhere (how much is reported),
    so those runs record it: a rerun on other sentences may drop other layers and is not taken for the same run."""
    return {"similarity_sentences": training.eval_sentences} if SIMILARITY in DROP[rule].needs else {}


def layer_drop_model(
    teacher: Teacher, rule: str, count: int, data: WikiTextSplits, batch_size: int, sentences: int | None, device
) -> tuple[SimplifiedBert, dict]:
    """The teacher without the ``count`` layers the drop rule ``rule`` (:data:`models.DROP`) chooses, and the
    meta its saved model records; a rule that needs the hidden states' similarities measures them on
    ``sentences`` validation sentences."""
    similarity = None
    if SIMILARITY in DROP[rule].needs:
        similarity = hidden_state_similarity(teacher.model, eval_loader(data.validation, batch_size, sentences), device)
    dropped = layers_to_drop(rule, teacher.num_layers, count, similarity)
    log.info("--drop %s removes teacher layers %s", rule, dropped)
    meta = {"method": "layer_drop", "drop_rule": rule, "dropped_teacher_layers": dropped}
    return assemble(teacher.model, dropped=set(dropped)), meta


def healing_objective(student: SimplifiedBert, teacher: Teacher, flags: Flags, device: torch.device):
    """The objective that heals ``student`` end to end against ``teacher`` (``--healing``, :data:`HEALING`)."""
    distillation = flags.output_distillation
    return HEALING[distillation.healing].function(
        teacher.model, student, student, distillation.temperature, distillation.hard_label_weight, device
    )


def one_teacher_forward(teacher: SimplifiedBert, objectives: list) -> Callable[[dict], list[dict]]:
    """``split(batch)`` for models healed in lockstep: the teacher's forward on the batch, run once (and once
    traced, when some objective reads the teacher's layers), given to every objective (:data:`TEACHER_OUTPUTS`).
    Each objective reads the forward it would have run alone, so each model is healed as it would be alone."""
    traces = sorted({objective.traced for objective in objectives})

    def split(batch: dict) -> list[dict]:
        with torch.no_grad():
            outputs = {trace: teacher(**batch, trace=trace) for trace in traces}
        return [{**batch, TEACHER_OUTPUTS: outputs} for _ in objectives]

    return split


@dataclass
class Healing:
    """One model of a healing run: its flags (as a run healing it alone would have them), run, folder and output."""

    flags: Flags
    run: RunDirectory
    model_dir: Path
    output: Path


def heal_and_save(
    healings: list[Healing], teacher: Teacher, data: WikiTextSplits, flags: Flags, device: torch.device, select
) -> None:
    """Heal every model in ``healings`` (``select(student, flags)`` marks what trains and returns what the saved
    model records of it) and save each at its output.
    Several heal in lockstep: every batch drawn once, one teacher forward for all (:func:`one_teacher_forward`),
    each model with its own checkpoints, resume and dropout stream, so it ends as it would healed alone."""
    members, students = [], []
    for healing in healings:
        student, _, meta = load_simplified(healing.model_dir, device)
        selected = select(student, healing.flags)
        log.info("%s: finetuning %d of %d parameters", healing.model_dir.name,
                 sum(p.numel() for p in student.parameters() if p.requires_grad), parameter_count(student))  # fmt: skip
        objective = healing_objective(student, teacher, healing.flags, device)
        members.append(Member(objective, healing.run, make_optimizer(objective.trainable, flags.training)))
        students.append((student, {**meta, "finetuned_from": str(healing.model_dir), **selected}))
    if len(members) > 1:
        log.info("%d models healed in lockstep: one teacher forward per batch feeds all of them", len(members))
    split = one_teacher_forward(teacher.model, [member.objective for member in members]) if len(members) > 1 else None
    valid = eval_loader(data.validation, flags.training.batch_size, flags.training.eval_sentences)
    diverged = None
    try:
        histories = fit_together(members, data.train, valid, flags.training, device, flags.data.seed, split)
    except Diverged as error:  # one or more left the lockstep: the others' healing is saved before it is said
        diverged, histories = error, [member.run.read_metrics() for member in members]
    for healing, (student, meta), history, member in zip(healings, students, histories, members, strict=True):
        if diverged is None or finished_training(member, flags.training):
            _save_healed(student, teacher, data, healing.flags, healing.run, healing.output, meta, history)
    if diverged is not None:
        raise diverged


def finetune_and_save(
    student: SimplifiedBert,
    teacher: Teacher,
    data: WikiTextSplits,
    flags: Flags,
    device: torch.device,
    run: RunDirectory,
    output_dir: str | Path,
    meta: dict,
) -> list[dict]:
    """Train the parameters of ``student`` that require grad in ``run``; save the model folder at the end."""
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    log.info("finetuning %d of %d parameters", trainable, parameter_count(student))
    objective = healing_objective(student, teacher, flags, device)
    valid = eval_loader(data.validation, flags.training.batch_size, flags.training.eval_sentences)
    history = fit(objective, data.train, valid, flags.training, run, device, flags.data.seed)
    _save_healed(student, teacher, data, flags, run, output_dir, meta, history)
    return history


def _save_healed(student, teacher: Teacher, data, flags: Flags, run: RunDirectory, output_dir, meta, history) -> None:
    healing = {"healing_steps": history[-1]["step"], "healing_sentences": len(data.train), "seed": flags.data.seed}
    meta = {**meta, "teacher": teacher.name, "finetune_run": str(run.path), "final_validation": history[-1], **healing}
    save_and_export(student, teacher.tokenizer, output_dir, meta, flags.export.export_hf)
    log.info("saved the finetuned model to %s", output_dir)
