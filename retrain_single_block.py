"""Retrain the self-attention of teacher layers by distillation on the teacher's own activations.

One student per (block, heads, d_k): ``--block 0 2 5`` (or ``all``) and several ``--block_heads`` /
``--block_d_k`` train every combination in one process, each in its own run folder with its own optimizer,
checkpoints, metrics and resume, exactly as separate runs would (same weights). With ``--teacher_store``
the teacher runs once for all of them; without a store or cache they train in lockstep, one teacher forward
per batch feeding all.

``--part ffn --ffn_width 768 [384 ...]`` retrains the block's feed-forward instead (dense -> GELU -> dense, before
residual + LayerNorm) at each width, on the same teacher signal; runs ``ffn_{block}_{width}``.

Example (offline): python retrain_single_block.py --teacher minilm --block 5 --epochs 2 --max_sentences 2000
"""

import functools

from utils.args import (
    MANY_STUDENTS_FLAGS,
    RUN_FLAGS,
    CacheArguments,
    DistillationArguments,
    FeedForwardArguments,
    StoreArguments,
    StudentInitArguments,
    TeacherArguments,
    parse_args,
)
from utils.data import WikiTextSplits, eval_loader
from utils.errors import UserError
from utils.experiment import cli_entry, start
from utils.objectives import AttentionDistillation, FeedForwardDistillation
from utils.pruning import initial_feed_forward, initial_student
from utils.runs import block_run, ffn_run
from utils.students import StudentRun, plan_students, train_students
from utils.teacher import Teacher, inspect_teacher
from utils.teacher_cache import teacher_training_set

GROUPS = [
    TeacherArguments,
    *MANY_STUDENTS_FLAGS,
    StudentInitArguments,
    FeedForwardArguments,
    DistillationArguments,
    *RUN_FLAGS,
    CacheArguments,
    StoreArguments,
]


def build_student(student: StudentRun, teacher: Teacher, data: WikiTextSplits, device) -> tuple:
    """The objective of one student attention (or feed-forward) and its training set (the store's slice, or the
    sentences)."""
    flags, block = student.flags, student.block
    if flags.feed_forward.part == "ffn":
        return build_feed_forward_student(student, teacher, data, device)
    shape, distillation = flags.student, flags.distillation
    valid = eval_loader(data.validation, flags.training.batch_size, flags.training.eval_sentences)
    init, dropout = flags.student_init.student_init, flags.dropout.block_dropout
    attention = initial_student(teacher.model, block, shape.block_heads, shape.block_d_k, dropout, init, valid, device)
    objective = AttentionDistillation(
        teacher.model,
        block,
        attention.to(device),
        distillation.criterion,
        distillation.loss_on_logits,
        distillation.loss_on_scores,
        mlm_metrics=teacher.has_mlm_head,
        device=device,
    )
    return objective, teacher_training_set(flags, teacher, "block", block, objective.signal, data.train, device)


def build_feed_forward_student(student: StudentRun, teacher: Teacher, data: WikiTextSplits, device) -> tuple:
    """The objective of one student feed-forward and its training set: the same teacher signal as an attention
    student's, so the store, caches and lockstep serve it unchanged."""
    flags, block = student.flags, student.block
    options = flags.feed_forward
    valid = eval_loader(data.validation, flags.training.batch_size, flags.training.eval_sentences)
    ffn = initial_feed_forward(teacher.model, block, options.ffn_width[0], options.ffn_init, valid, device)
    objective = FeedForwardDistillation(
        teacher.model, block, ffn.to(device), flags.distillation.criterion, teacher.has_mlm_head, device
    )
    return objective, teacher_training_set(flags, teacher, "block", block, objective.signal, data.train, device)


def check_part(flags) -> None:
    """A feed-forward student takes MSE or L1 on its output; the attention-only choices are refused (and the
    feed-forward ones for an attention student)."""
    options = flags.feed_forward
    if options.part != "ffn":
        if options.ffn_width or options.ffn_init != "random":
            raise UserError("--ffn_width and --ffn_init are for feed-forward students: add --part ffn")
        return
    distillation = flags.distillation
    if distillation.criterion == "CrossEntropy" or distillation.loss_on_scores:
        raise UserError("--part ffn: a feed-forward student is distilled by --criterion MSE or L1 on its output")
    if flags.student_init.student_init != "random":
        raise UserError("--part ffn: --student_init is for attention students; use --ffn_init")


@cli_entry
def main(argv: list[str] | None = None) -> list[dict] | dict[str, list[dict]]:
    """The metric records of the run, or with several students a dict of them by run folder name."""
    flags = parse_args(GROUPS, __doc__, argv)
    device = start(flags, flags.data.seed)
    info = inspect_teacher(flags.teacher.teacher, flags.data.seq_len)
    check_part(flags)
    students = plan_students(flags, info, ffn_run if flags.feed_forward.part == "ffn" else block_run)
    build = functools.partial(build_student, device=device)
    histories = train_students(students, flags, info, device, build, kind="block")
    return next(iter(histories.values())) if len(histories) == 1 else histories


if __name__ == "__main__":
    main()
