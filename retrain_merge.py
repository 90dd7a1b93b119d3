"""Merge two adjacent teacher layers (block, block+1) into one layer trained by MSE on the teacher's
hidden states: input = the state entering layer block, target = the state leaving layer block+1.

Example (offline): python retrain_merge.py --teacher storage/teacher --block 0 --block_heads 12 --block_d_k 32
"""
from utils.args import (
    BlockArguments, CacheArguments, DataArguments, DropoutArguments, MergeArguments, StorageArguments, StudentArguments,
    TeacherArguments, TrainingArguments, parse_args,
)  # fmt: skip
from utils.data import load_data
from utils.errors import cli_entry
from utils.experiment import start
from utils.merging import train_merged_layer
from utils.teacher import load_teacher


@cli_entry
def main(argv: list[str] | None = None) -> list[dict]:
    groups = [TeacherArguments, BlockArguments, StudentArguments, DropoutArguments, MergeArguments, DataArguments,
              StorageArguments, TrainingArguments, CacheArguments]  # fmt: skip
    args = parse_args(groups, __doc__, argv)
    device = start(args)
    teacher = load_teacher(args.teacher, device)
    teacher.check_layer(args.block, pair=True)
    data = load_data(args, teacher.tokenizer)
    _, history = train_merged_layer(teacher, args.block, args, device, data)
    return history


if __name__ == "__main__":
    main()
