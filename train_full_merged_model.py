"""Finetune the assembled retrained model end to end by distillation on the teacher's MLM outputs.

Trains every student attention (``--train_ffn`` also the feed-forwards and LayerNorms) of the model the
notebook assembled, and saves the result as a new model folder.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from models import select_trainable
from utils.args import (
    DataArguments, ModelArguments, OutputDistillationArguments, StorageArguments, StudentArguments, TeacherArguments,
    TrainingArguments, flag, parse_args,
)  # fmt: skip
from utils.data import load_data
from utils.errors import cli_entry
from utils.experiment import retrained_model_dir, start
from utils.finetune import finetune_and_save
from utils.model_io import load_simplified
from utils.teacher import load_teacher


@dataclass
class FinetuneArguments:
    train_ffn: bool = flag(False, "Also train every layer's feed-forward and LayerNorms.")
    output_model: Optional[str] = flag(None, "Folder of the finetuned model (default: --model with suffix _finetuned).")


@cli_entry
def main(argv: list[str] | None = None) -> list[dict]:
    groups = [TeacherArguments, ModelArguments, StudentArguments, FinetuneArguments, OutputDistillationArguments,
              DataArguments, StorageArguments, TrainingArguments]  # fmt: skip
    args = parse_args(groups, __doc__, argv, lr=1e-4, epochs=1)
    device = start(args)
    model_dir = Path(args.model or retrained_model_dir(args.storage_directory, args.block_heads, args.block_d_k))
    teacher = load_teacher(args.teacher, device)
    student, _, meta = load_simplified(model_dir, device)
    select_trainable(student, feed_forward=args.train_ffn)
    data = load_data(args, teacher.tokenizer)
    identity = {"teacher": teacher.name, "model": str(model_dir.resolve()), "train_ffn": args.train_ffn}
    output = args.output_model or f"{model_dir}_finetuned"
    return finetune_and_save(student, teacher, data, args, device, f"finetune_{model_dir.name}", identity, output,
                             meta={**meta, "finetuned_from": str(model_dir), "train_ffn": args.train_ffn})  # fmt: skip


if __name__ == "__main__":
    main()
