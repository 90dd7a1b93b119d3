"""Merge two adjacent teacher layers (block, block+1) into one layer trained by MSE on the teacher's
hidden states: input = the state entering layer block, target = the state leaving layer block+1.

Several pairs and shapes (``--block 0 2 4`` or ``all``, several ``--block_heads`` / ``--block_d_k``) train
in one process, each in its own run as a separate run would; ``--teacher_store`` runs the teacher once.

Example (offline): python retrain_merge.py --teacher storage/teacher --block 0 --block_heads 12 --block_d_k 32
"""

import torch

from utils.args import (
    MANY_STUDENTS_FLAGS,
    RUN_FLAGS,
    CacheArguments,
    MergeArguments,
    StoreArguments,
    TeacherArguments,
    parse_args,
)
from utils.data import load_data
from utils.errors import cli_entry
from utils.experiment import start
from utils.merging import train_merged_layer
from utils.runs import already_finished, merge_run
from utils.teacher import inspect_teacher, load_teacher

GROUPS = [TeacherArguments, *MANY_STUDENTS_FLAGS, MergeArguments, *RUN_FLAGS, CacheArguments, StoreArguments]


@cli_entry
def main(argv: list[str] | None = None) -> list[dict] | dict[str, list[dict]]:
    """The metric records of the run, or with several pairs or shapes a dict of them by run folder name."""
    flags = parse_args(GROUPS, __doc__, argv)
    device = start(flags, flags.data.seed)
    info = inspect_teacher(flags.teacher.teacher, flags.data.seq_len)
    layers = []
    for block in flags.blocks.resolve(info.num_layers, pair=True):
        info.check_layer(block, pair=True)
        for shape in flags.shapes.students():
            single = flags.for_student(block, shape)
            layers.append((block, single, merge_run(single, info, block, "merge")))
    pending = [(block, single, run) for block, single, run in layers if not already_finished(run, single)]
    if pending:
        teacher = load_teacher(info, device)
        data = load_data(flags.data, teacher.tokenizer)
        for block, single, run in pending:
            torch.manual_seed(flags.data.seed)  # initialised as if it were the only merged layer of the process
            train_merged_layer(teacher, block, single, device, data, run)
    histories = {run.path.name: run.read_metrics() for _, _, run in layers}
    return next(iter(histories.values())) if len(histories) == 1 else histories


if __name__ == "__main__":
    main()
