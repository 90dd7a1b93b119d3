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

from utils.args import DataArguments, StorageArguments, TrainingArguments, flag, parse_args
from utils.files import atomic_write, atomic_write_dir
from utils.data import eval_loader, load_data
from utils.errors import cli_entry
from utils.experiment import log, run_directory, start
from utils.objectives import MaskedLMTraining
from utils.teacher import load_teacher
from utils.training import fit


@dataclass
class TeacherTrainingArguments:
    init: str = flag("minilm", "Model to start from: hub id, local folder or 'minilm' (as --teacher).")
    output_dir: Optional[str] = flag(None, "Where the trained teacher is saved (default {storage_directory}/teacher).")
    head_lr: float = flag(1e-3, "Learning rate of the MLM head (--lr is the encoder's).")
    mlm_probability: float = flag(0.15, "Share of tokens masked per training sentence.")


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    groups = [TeacherTrainingArguments, DataArguments, StorageArguments, TrainingArguments]
    args = parse_args(groups, __doc__, argv, lr=1e-4, batch_size=32, epochs=1, max_steps=500, save_checkpoint_every=1)
    device = start(args)
    teacher = load_teacher(args.init, device, frozen=False)
    data = load_data(args, teacher.tokenizer, train_mlm_probability=args.mlm_probability)

    head = [p for name, p in teacher.hf_model.named_parameters() if name.startswith("cls.")]
    encoder = [p for name, p in teacher.hf_model.named_parameters() if not name.startswith("cls.")]
    optimizer = torch.optim.AdamW(
        [{"params": encoder, "lr": args.lr}, {"params": head, "lr": args.head_lr}],
        betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay,
    )  # fmt: skip
    objective = MaskedLMTraining(teacher.model, device)
    identity = {"init": teacher.name, "seq_len": args.seq_len, "mlm_probability": args.mlm_probability}
    run = run_directory(args, "teacher", identity)
    fit(objective, data.train, eval_loader(data.validation, args.batch_size, args.eval_sentences), args, run, device,
        optimizer=optimizer)  # fmt: skip

    test = objective.evaluate(eval_loader(data.test, 128))
    output_dir = Path(args.output_dir or Path(args.storage_directory) / "teacher")

    def write(folder: Path) -> None:
        teacher.hf_model.save_pretrained(folder)
        teacher.tokenizer.save_pretrained(folder)
        report = {"init": teacher.name, "test_sentences": len(data.test), **test, "step": run.read_metrics()[-1]["step"]}
        atomic_write(folder / "eval.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2)))

    atomic_write_dir(output_dir, write)
    log.info("teacher saved to %s: test top-1 %.1f%%, top-5 %.1f%%", output_dir, 100 * test["top1"], 100 * test["top5"])
    print(json.dumps(test))
    return test


if __name__ == "__main__":
    main()
