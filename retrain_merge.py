"""Merge two adjacent teacher layers (block, block+1) into one layer trained by MSE on the teacher's
hidden states: input = the state entering layer block, target = the state leaving layer block+1.

Example (offline): python retrain_merge.py --teacher storage/teacher --block 0 --block_heads 12 --block_d_k 32
"""

from utils.args import BLOCK_STUDENT_FLAGS, RUN_FLAGS, CacheArguments, MergeArguments, TeacherArguments, parse_args
from utils.data import load_data
from utils.errors import cli_entry
from utils.experiment import start
from utils.merging import train_merged_layer
from utils.runs import already_finished, merge_run
from utils.teacher import inspect_teacher, load_teacher

GROUPS = [TeacherArguments, *BLOCK_STUDENT_FLAGS, MergeArguments, *RUN_FLAGS, CacheArguments]


@cli_entry
def main(argv: list[str] | None = None) -> list[dict]:
    flags = parse_args(GROUPS, __doc__, argv)
    device = start(flags, flags.data.seed)
    info, block = inspect_teacher(flags.teacher.teacher, flags.data.seq_len), flags.block.block
    info.check_layer(block, pair=True)
    run = merge_run(flags, info, block, "merge")
    if already_finished(run, flags):
        return run.read_metrics()
    teacher = load_teacher(info, device)
    data = load_data(flags.data, teacher.tokenizer)
    return train_merged_layer(teacher, block, flags, device, data, run)


if __name__ == "__main__":
    main()
