"""Retrain the self-attention of one teacher layer by distillation on the teacher's own activations.

Example (offline): python retrain_single_block.py --teacher minilm --block 5 --epochs 2 --max_sentences 2000
"""
from models import student_attention
from utils.args import (
    BlockArguments, CacheArguments, DataArguments, DistillationArguments, DropoutArguments, StorageArguments, StudentArguments,
    TeacherArguments, TrainingArguments, parse_args,
)
from utils.data import eval_loader, load_data
from utils.errors import cli_entry
from utils.experiment import block_run_name, run_directory, start
from utils.objectives import AttentionDistillation
from utils.teacher import load_teacher
from utils.teacher_cache import cached_training_set
from utils.training import fit


@cli_entry
def main(argv: list[str] | None = None) -> list[dict]:
    groups = [TeacherArguments, BlockArguments, StudentArguments, DropoutArguments, DistillationArguments, DataArguments,
              StorageArguments, TrainingArguments, CacheArguments]  # fmt: skip
    args = parse_args(groups, __doc__, argv)
    device = start(args)
    teacher = load_teacher(args.teacher, device)
    teacher.check_layer(args.block)
    data = load_data(args, teacher.tokenizer)

    student = student_attention(teacher.model, args.block_heads, args.block_d_k, args.block_dropout).to(device)
    objective = AttentionDistillation(
        teacher.model, args.block, student, args.criterion, args.loss_on_logits, args.loss_on_scores,
        mlm_metrics=teacher.has_mlm_head, device=device,
    )  # fmt: skip
    identity = {
        "teacher": teacher.name, "block": args.block, "block_heads": args.block_heads, "block_d_k": args.block_d_k,
        "criterion": args.criterion, "loss_on_logits": args.loss_on_logits, "loss_on_scores": args.loss_on_scores,
        "seq_len": args.seq_len, "cache_teacher": args.cache_teacher,
    }  # fmt: skip
    name = block_run_name("block", args.block, args.block_d_k, args.block_heads)
    run = run_directory(args, name, identity)
    train_set = data.train
    if args.cache_teacher:
        train_set = cached_training_set(args, f"block_{args.block}", teacher.name, args.block, objective, data.train,
                                        teacher.model.config.hidden_size, device)  # fmt: skip
    valid = eval_loader(data.validation, args.batch_size, args.eval_sentences)
    return fit(objective, train_set, valid, args, run, device)


if __name__ == "__main__":
    main()
