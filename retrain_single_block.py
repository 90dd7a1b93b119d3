"""Retrain the self-attention of one teacher layer by distillation on the teacher's own activations.

Example (offline): python retrain_single_block.py --teacher minilm --block 5 --epochs 2 --max_sentences 2000
"""

from utils.args import (
    BLOCK_STUDENT_FLAGS,
    RUN_FLAGS,
    CacheArguments,
    DistillationArguments,
    StudentInitArguments,
    TeacherArguments,
    parse_args,
)
from utils.data import eval_loader, load_data
from utils.errors import cli_entry
from utils.experiment import start
from utils.objectives import AttentionDistillation
from utils.pruning import initial_student
from utils.runs import already_finished, block_run
from utils.teacher import inspect_teacher, load_teacher
from utils.teacher_cache import teacher_training_set
from utils.training import fit

GROUPS = [
    TeacherArguments,
    *BLOCK_STUDENT_FLAGS,
    StudentInitArguments,
    DistillationArguments,
    *RUN_FLAGS,
    CacheArguments,
]


@cli_entry
def main(argv: list[str] | None = None) -> list[dict]:
    flags = parse_args(GROUPS, __doc__, argv)
    device = start(flags, flags.data.seed)
    info, block = inspect_teacher(flags.teacher.teacher, flags.data.seq_len), flags.block.block
    info.check_layer(block)
    run = block_run(flags, info, block)
    if already_finished(run, flags):
        return run.read_metrics()
    teacher = load_teacher(info, device)
    data = load_data(flags.data, teacher.tokenizer)

    shape, distillation = flags.student, flags.distillation
    valid = eval_loader(data.validation, flags.training.batch_size, flags.training.eval_sentences)
    init = flags.student_init.student_init
    dropout = flags.dropout.block_dropout
    student = initial_student(teacher.model, block, shape.block_heads, shape.block_d_k, dropout, init, valid, device)
    student.to(device)
    objective = AttentionDistillation(
        teacher.model,
        block,
        student,
        distillation.criterion,
        distillation.loss_on_logits,
        distillation.loss_on_scores,
        mlm_metrics=teacher.has_mlm_head,
        device=device,
    )
    train_set = teacher_training_set(
        flags, teacher.name, "block", block, objective.signal, data.train, teacher.model.config.hidden_size, device
    )
    return fit(objective, train_set, valid, flags.training, run, device, flags.data.seed)


if __name__ == "__main__":
    main()
