"""Merge two adjacent teacher layers (block, block+1) into one layer trained by MSE on the teacher's
hidden states: input = the state entering layer block, target = the state leaving layer block+1.

Several pairs and shapes (``--block 0 2 4`` or ``all``, several ``--block_heads`` / ``--block_d_k``) train
in one process, each in its own run as a separate run would; ``--teacher_store`` runs the teacher once, and
without a store or cache they train in lockstep, one teacher forward per batch feeding all.

Example (offline): python retrain_merge.py --teacher storage/teacher --block 0 --block_heads 12 --block_d_k 32
"""

from utils.args import (
    MANY_STUDENTS_FLAGS,
    RUN_FLAGS,
    CacheArguments,
    MergeArguments,
    StoreArguments,
    TeacherArguments,
    parse_args,
)
from utils.data import WikiTextSplits
from utils.experiment import cli_entry, start
from utils.merging import merge_objective
from utils.runs import merge_run
from utils.students import StudentRun, plan_students, train_students
from utils.teacher import Teacher, inspect_teacher

GROUPS = [TeacherArguments, *MANY_STUDENTS_FLAGS, MergeArguments, *RUN_FLAGS, CacheArguments, StoreArguments]


@cli_entry
def main(argv: list[str] | None = None) -> list[dict] | dict[str, list[dict]]:
    """The metric records of the run, or with several pairs or shapes a dict of them by run folder name."""
    flags = parse_args(GROUPS, __doc__, argv)
    device = start(flags, flags.data.seed)
    info = inspect_teacher(flags.teacher.teacher, flags.data.seq_len)
    students = plan_students(flags, info, lambda single, info, block: merge_run(single, info, block, "merge"), True)

    def build(student: StudentRun, teacher: Teacher, data: WikiTextSplits) -> tuple:
        return merge_objective(teacher, student.block, student.flags, device, data)

    histories = train_students(students, flags, info, device, build, kind="merge")
    return next(iter(histories.values())) if len(histories) == 1 else histories


if __name__ == "__main__":
    main()
