"""Train one layer's student attention on the teacher's output distribution at the masked token.

Gradients flow through the frozen teacher layers above the block. Starts from the block's
retrain_single_block checkpoint when there is one (or ``--init_from``), otherwise from scratch.
"""
from dataclasses import dataclass
from typing import Optional

from models import assemble, student_attention
from utils.args import (
    BlockArguments, DataArguments, DropoutArguments, OutputDistillationArguments, StorageArguments, StudentArguments,
    TeacherArguments, TrainingArguments, flag, parse_args,
)  # fmt: skip
from utils.assembly import run_checkpoint
from utils.data import eval_loader, load_data
from utils.errors import cli_entry
from utils.experiment import block_run_name, log, run_directory, start
from utils.model_io import load_block_checkpoint
from utils.objectives import OutputDistillation
from utils.teacher import load_teacher
from utils.training import fit


@dataclass
class InitArguments:
    init_from: Optional[str] = flag(
        None, "Checkpoint to start from; default: this block's retrain_single_block latest.pt if it exists; "
              "'none' starts from random weights.")  # fmt: skip


@cli_entry
def main(argv: list[str] | None = None) -> list[dict]:
    groups = [TeacherArguments, BlockArguments, StudentArguments, DropoutArguments, InitArguments, OutputDistillationArguments,
              DataArguments, StorageArguments, TrainingArguments]  # fmt: skip
    args = parse_args(groups, __doc__, argv, lr=1e-4)
    device = start(args)
    teacher = load_teacher(args.teacher, device)
    teacher.check_layer(args.block)
    data = load_data(args, teacher.tokenizer)

    student = student_attention(teacher.model, args.block_heads, args.block_d_k, args.block_dropout)
    init_from = args.init_from
    if init_from is None:
        default = run_checkpoint(args.storage_directory, "block", args.block, args.block_d_k, args.block_heads)
        init_from = str(default) if default.exists() else "none"
    if init_from != "none":
        state = load_block_checkpoint(init_from, args.block_heads, args.block_d_k)
        student.load_state_dict(state["model"])
        log.info("student attention initialised from %s", init_from)
    student.to(device)
    model = assemble(teacher.model, attentions={args.block: student})
    objective = OutputDistillation(teacher.model, model, student, args.temperature, args.hard_label_weight, device)
    identity = {"teacher": teacher.name, "block": args.block, "block_heads": args.block_heads,
                "block_d_k": args.block_d_k, "seq_len": args.seq_len}  # fmt: skip
    run = run_directory(args, block_run_name("till_end", args.block, args.block_d_k, args.block_heads), identity)
    return fit(objective, data.train, eval_loader(data.validation, args.batch_size, args.eval_sentences), args, run, device)


if __name__ == "__main__":
    main()
