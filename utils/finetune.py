"""End-to-end finetuning of a simplified model by distillation on the teacher's MLM outputs, then saving it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from models import DROP, SimplifiedBert, assemble, layers_to_drop, parameter_count
from models.methods import SIMILARITY
from utils.args import Flags
from utils.checkpoint import RunDirectory
from utils.data import WikiTextSplits, eval_loader
from utils.metrics import hidden_state_similarity
from utils.model_io import save_and_export
from utils.objectives import HEALING
from utils.teacher import Teacher
from utils.training import fit

log = logging.getLogger(__name__)


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
    distillation = flags.output_distillation
    objective = HEALING[distillation.healing].function(
        teacher.model, student, student, distillation.temperature, distillation.hard_label_weight, device
    )
    valid = eval_loader(data.validation, flags.training.batch_size, flags.training.eval_sentences)
    history = fit(objective, data.train, valid, flags.training, run, device, flags.data.seed)
    healing = {"healing_steps": history[-1]["step"], "healing_sentences": len(data.train), "seed": flags.data.seed}
    meta = {**meta, "teacher": teacher.name, "finetune_run": str(run.path), "final_validation": history[-1], **healing}
    save_and_export(student, teacher.tokenizer, output_dir, meta, flags.export.export_hf)
    log.info("saved the finetuned model to %s", output_dir)
    return history
