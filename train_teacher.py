"""MLM-train a teacher on WikiText-2 train sentences and save it as a Hugging Face model folder.

The offline default teacher for demos: the pretrained 6-layer encoder of ``minilm`` gets a masked-LM
head and is finetuned with it (head and encoder at separate learning rates), then saved where every
script takes it as ``--teacher``. Reports top-1/top-5 on single-masked test sentences.
"""

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from utils.args import RUN_FLAGS, flag, parse_args, require
from utils.data import eval_loader, load_data
from utils.errors import UserError
from utils.experiment import cli_entry, log, start
from utils.files import atomic_write, atomic_write_dir
from utils.objectives import MaskedLMTraining
from utils.runs import already_finished, teacher_run
from utils.storage import Storage
from utils.teacher import inspect_teacher, load_teacher
from utils.training import fit

EVAL_FILE = "eval.json"  # the test evaluation saved with the teacher


@dataclass
class TeacherTrainingArguments:
    attribute = "teacher_training"

    init: str = flag("minilm", "Model to start from: hub id, local folder or 'minilm' (as --teacher).")
    output_dir: Optional[str] = flag(
        None, "Where the trained teacher is saved (default: the storage directory's teacher)."
    )
    head_lr: float = flag(1e-3, "Learning rate of the MLM head (--lr is the encoder's).")
    mlm_probability: float = flag(0.15, "Share of tokens masked per training sentence.")
    plateau_points: Optional[float] = flag(
        None,
        "Train until validation top-1 gains less than this many points over --plateau_steps steps (evaluated "
        "every --plateau_steps; --max_steps and --epochs still cap it). Unset: train --max_steps steps.",
    )
    plateau_steps: int = flag(500, "Steps between the validation checks of --plateau_points.")

    def __post_init__(self):
        require(0 < self.head_lr < float("inf"), f"--head_lr must be a positive number, got {self.head_lr}")
        require(0 < self.mlm_probability <= 1, f"--mlm_probability must be in (0, 1], got {self.mlm_probability}")
        require(self.plateau_steps > 0, f"--plateau_steps must be positive, got {self.plateau_steps}")
        require(
            self.plateau_points is None or self.plateau_points > 0,
            f"--plateau_points must be a positive number of top-1 points, got {self.plateau_points}",
        )


def plateau_reached(records: list[dict], points: float, steps: int) -> bool:
    """True when the last validation top-1 is less than ``points`` (percentage points) above the one
    ``steps`` steps before it: the teacher has stopped gaining."""
    top1_at = {record["step"]: record["top1"] for record in records if "top1" in record}
    if not top1_at:
        return False
    last = max(top1_at)
    return last - steps in top1_at and 100 * (top1_at[last] - top1_at[last - steps]) < points


def train_until(fit_to, run, training, options) -> None:
    """``fit_to(training)`` once for ``--max_steps``, or, with ``--plateau_points``, in chunks of
    ``--plateau_steps`` steps (each a resumable stop of the same run) until the gain per chunk falls under it."""
    if options.plateau_points is None:
        fit_to(training)
        return
    step = 0
    while training.max_steps is None or step < training.max_steps:
        target = step + options.plateau_steps
        if training.max_steps is not None:
            target = min(target, training.max_steps)
        fit_to(replace(training, max_steps=target))
        records = run.read_metrics()
        reached = records[-1]["step"] if records else 0
        if plateau_reached(records, options.plateau_points, options.plateau_steps):
            log.info(
                "validation top-1 gained < %g points over the last %d steps: stopping at step %d",
                options.plateau_points,
                options.plateau_steps,
                reached,
            )
            return
        if reached < target:  # the epochs ended first
            return
        step = target


GROUPS = [TeacherTrainingArguments, *RUN_FLAGS]
DEFAULTS = {"lr": 1e-4, "batch_size": 32, "epochs": 1, "max_steps": 500, "save_checkpoint_every": 1}


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    flags = parse_args(GROUPS, __doc__, argv, **DEFAULTS)
    device = start(flags, flags.data.seed)
    options, training = flags.teacher_training, flags.training
    if training.stop_patience is not None:
        raise UserError("--stop_patience: the teacher stops by --plateau_points / --plateau_steps (validation top-1)")
    info = inspect_teacher(options.init, flags.data.seq_len)
    run = teacher_run(flags, info)
    output_dir = Path(options.output_dir or Storage(flags.storage.storage_directory).teacher)
    plateaued = options.plateau_points is not None and plateau_reached(
        run.read_metrics(), options.plateau_points, options.plateau_steps
    )
    if (already_finished(run, flags, output_dir / EVAL_FILE) or plateaued) and (output_dir / EVAL_FILE).exists():
        return json.loads((output_dir / EVAL_FILE).read_text())
    teacher = load_teacher(info, device, frozen=False)
    data = load_data(flags.data, teacher.tokenizer, train_mlm_probability=options.mlm_probability)

    head = [p for name, p in teacher.hf_model.named_parameters() if name.startswith("cls.")]
    encoder = [p for name, p in teacher.hf_model.named_parameters() if not name.startswith("cls.")]
    optimizer = torch.optim.AdamW(
        [{"params": encoder, "lr": training.lr}, {"params": head, "lr": options.head_lr}],
        betas=(training.adam_beta1, training.adam_beta2),
        weight_decay=training.adam_weight_decay,
    )
    objective = MaskedLMTraining(teacher.model, device)
    valid = eval_loader(data.validation, training.batch_size, training.eval_sentences)
    train_until(
        lambda stage: fit(objective, data.train, valid, stage, run, device, flags.data.seed, optimizer=optimizer),
        run,
        training,
        options,
    )

    test = objective.evaluate(eval_loader(data.test, 128))

    def write(folder: Path) -> None:
        teacher.hf_model.save_pretrained(folder)
        teacher.tokenizer.save_pretrained(folder)
        report = {
            "init": teacher.name,
            "test_sentences": len(data.test),
            **test,
            "step": run.read_metrics()[-1]["step"],
        }
        atomic_write(folder / EVAL_FILE, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))

    atomic_write_dir(output_dir, write)
    log.info("teacher saved to %s: test top-1 %.1f%%, top-5 %.1f%%", output_dir, 100 * test["top1"], 100 * test["top5"])
    print(json.dumps(test))
    return test


if __name__ == "__main__":
    main()
