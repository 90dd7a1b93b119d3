"""Retrain the self-attention of teacher layers by distillation on the teacher's own activations.

One student per (block, heads, d_k): ``--block 0 2 5`` (or ``all``) and several ``--block_heads`` /
``--block_d_k`` train every combination in one process, each in its own run folder with its own optimizer,
checkpoints, metrics and resume, exactly as separate runs would (same weights). With ``--teacher_store``
the teacher runs once for all of them.

Example (offline): python retrain_single_block.py --teacher minilm --block 5 --epochs 2 --max_sentences 2000
"""

import logging

import torch

from utils.args import (
    MANY_STUDENTS_FLAGS,
    RUN_FLAGS,
    CacheArguments,
    DistillationArguments,
    Flags,
    StoreArguments,
    StudentInitArguments,
    TeacherArguments,
    parse_args,
)
from utils.data import WikiTextSplits, eval_loader, load_data
from utils.errors import cli_entry
from utils.experiment import start
from utils.objectives import AttentionDistillation
from utils.pruning import initial_student
from utils.runs import already_finished, block_run
from utils.teacher import Teacher, inspect_teacher, load_teacher
from utils.teacher_cache import teacher_training_set
from utils.training import fit

GROUPS = [
    TeacherArguments,
    *MANY_STUDENTS_FLAGS,
    StudentInitArguments,
    DistillationArguments,
    *RUN_FLAGS,
    CacheArguments,
    StoreArguments,
]
log = logging.getLogger("sitra")


def train_student(flags: Flags, teacher: Teacher, data: WikiTextSplits, block: int, run, device) -> list[dict]:
    """One student attention for ``block`` (``flags`` of a single-student run), trained in ``run``."""
    torch.manual_seed(flags.data.seed)  # initialised as if it were the only student of the process
    shape, distillation = flags.student, flags.distillation
    valid = eval_loader(data.validation, flags.training.batch_size, flags.training.eval_sentences)
    init, dropout = flags.student_init.student_init, flags.dropout.block_dropout
    student = initial_student(teacher.model, block, shape.block_heads, shape.block_d_k, dropout, init, valid, device)
    objective = AttentionDistillation(
        teacher.model,
        block,
        student.to(device),
        distillation.criterion,
        distillation.loss_on_logits,
        distillation.loss_on_scores,
        mlm_metrics=teacher.has_mlm_head,
        device=device,
    )
    train_set = teacher_training_set(flags, teacher, "block", block, objective.signal, data.train, device)
    return fit(objective, train_set, valid, flags.training, run, device, flags.data.seed)


@cli_entry
def main(argv: list[str] | None = None) -> list[dict] | dict[str, list[dict]]:
    """The metric records of the run, or with several students a dict of them by run folder name."""
    flags = parse_args(GROUPS, __doc__, argv)
    device = start(flags, flags.data.seed)
    info = inspect_teacher(flags.teacher.teacher, flags.data.seq_len)
    students = []
    for block in flags.blocks.resolve(info.num_layers):
        info.check_layer(block)
        for shape in flags.shapes.students():
            single = flags.for_student(block, shape)
            students.append((block, single, block_run(single, info, block)))
    pending = [(block, single, run) for block, single, run in students if not already_finished(run, single)]
    if pending:
        if len(pending) > 1 and not flags.cache.teacher_store:
            log.info("%d students: pass --teacher_store to run the teacher once for all of them", len(pending))
        teacher = load_teacher(info, device)
        data = load_data(flags.data, teacher.tokenizer)
        for block, single, run in pending:
            train_student(single, teacher, data, block, run, device)
    histories = {run.path.name: run.read_metrics() for _, _, run in students}
    return next(iter(histories.values())) if len(histories) == 1 else histories


if __name__ == "__main__":
    main()
