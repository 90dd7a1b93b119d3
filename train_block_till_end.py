"""Train one layer's student attention on the teacher's output distribution at the masked token.

Gradients flow through the frozen teacher layers above the block. Starts from the block's
retrain_single_block checkpoint when there is one (or ``--init_from``), otherwise from scratch.
"""

from models import assemble, student_attention
from utils.args import BLOCK_STUDENT_FLAGS, FINETUNE_FLAGS, InitFromArguments, TeacherArguments, parse_args
from utils.data import eval_loader, load_data
from utils.experiment import cli_entry, log, start
from utils.model_io import load_block_checkpoint
from utils.objectives import HEALING
from utils.runs import already_finished, run_variant, till_end_run
from utils.storage import Storage
from utils.teacher import inspect_teacher, load_teacher
from utils.training import fit

GROUPS = [TeacherArguments, *BLOCK_STUDENT_FLAGS, InitFromArguments, *FINETUNE_FLAGS]


@cli_entry
def main(argv: list[str] | None = None) -> list[dict]:
    flags = parse_args(GROUPS, __doc__, argv, lr=1e-4)
    device = start(flags, flags.data.seed)
    info, block, shape = inspect_teacher(flags.teacher.teacher, flags.data.seq_len), flags.block.block, flags.student
    info.check_layer(block)
    init_from = flags.init_from.init_from
    if init_from is None:  # the block run of the same shape (default variant), when it exists
        default = Storage(flags.storage.storage_directory).block_output(
            "block", block, shape.block_heads, shape.block_d_k, run_variant(flags, "block")
        )
        init_from = str(default.resolve()) if default.exists() else "none"
    run = till_end_run(flags, info, block, init_from)
    if already_finished(run, flags):
        return run.read_metrics()
    teacher = load_teacher(info, device)
    data = load_data(flags.data, teacher.tokenizer)

    student = student_attention(teacher.model, shape.block_heads, shape.block_d_k, flags.dropout.block_dropout)
    if init_from != "none":
        state = load_block_checkpoint(init_from, shape.block_heads, shape.block_d_k)
        student.load_state_dict(state["model"])
        log.info("student attention initialised from %s", init_from)
    student.to(device)
    model = assemble(teacher.model, attentions={block: student})
    distillation = flags.output_distillation
    objective = HEALING[distillation.healing].function(
        teacher.model, model, student, distillation.temperature, distillation.hard_label_weight, device
    )
    valid = eval_loader(data.validation, flags.training.batch_size, flags.training.eval_sentences)
    return fit(objective, data.train, valid, flags.training, run, device, flags.data.seed)


if __name__ == "__main__":
    main()
