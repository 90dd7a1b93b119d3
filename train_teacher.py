"""MLM-train a teacher on WikiText-2 train sentences and save it as a Hugging Face model folder.

The offline default teacher for demos: the pretrained 6-layer encoder of ``minilm`` gets a masked-LM
head and is finetuned with it (head and encoder at separate learning rates), then saved where every
script takes it as ``--teacher``. Reports top-1/top-5 on single-masked test sentences.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from utils.args import RUN_FLAGS, flag, parse_args, require
from utils.data import eval_loader, load_data
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

    def __post_init__(self):
        require(0 < self.head_lr < float("inf"), f"--head_lr must be a positive number, got {self.head_lr}")
        require(0 < self.mlm_probability <= 1, f"--mlm_probability must be in (0, 1], got {self.mlm_probability}")


GROUPS = [TeacherTrainingArguments, *RUN_FLAGS]


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    flags = parse_args(GROUPS, __doc__, argv, lr=1e-4, batch_size=32, epochs=1, max_steps=500, save_checkpoint_every=1)
    device = start(flags, flags.data.seed)
    options, training = flags.teacher_training, flags.training
    info = inspect_teacher(options.init, flags.data.seq_len)
    run = teacher_run(flags, info)
    output_dir = Path(options.output_dir or Storage(flags.storage.storage_directory).teacher)
    if already_finished(run, flags, output_dir / EVAL_FILE):
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
    fit(objective, data.train, valid, training, run, device, flags.data.seed, optimizer=optimizer)

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
