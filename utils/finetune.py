"""End-to-end finetuning of a simplified model by distillation on the teacher's MLM outputs, then saving it."""
from __future__ import annotations

from pathlib import Path

from models import SimplifiedBert, parameter_count
from utils.data import WikiTextSplits, eval_loader
from utils.experiment import log, run_directory
from utils.model_io import save_simplified
from utils.objectives import OutputDistillation
from utils.teacher import Teacher
from utils.training import fit


def finetune_and_save(
    student: SimplifiedBert, teacher: Teacher, data: WikiTextSplits, args, device, run_name: str, identity: dict,
    output_dir: str | Path, meta: dict,
) -> list[dict]:  # fmt: skip
    """Train the parameters of ``student`` that require grad; save the model folder at the end."""
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    log.info("finetuning %d of %d parameters", trainable, parameter_count(student))
    objective = OutputDistillation(teacher.model, student, student, args.temperature, args.hard_label_weight, device)
    run = run_directory(args, run_name, identity)
    history = fit(objective, data.train, eval_loader(data.validation, args.batch_size, args.eval_sentences), args, run, device)
    save_simplified(student, teacher.tokenizer, output_dir, meta={**meta, "teacher": teacher.name, "finetune_run": str(run.path),
                                                                 "final_validation": history[-1]})  # fmt: skip
    log.info("saved the finetuned model to %s", output_dir)
    return history
