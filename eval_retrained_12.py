"""Evaluate a simplified model against its teacher (and a larger reference) on masked WikiText-2 test sentences.

Reports top-1/5/10 accuracy, agreement with the teacher, KL(teacher || model), the reference score,
parameters, FLOPs per token and latency; writes metrics.json, metrics.md and predictions.tsv.
"""
from pathlib import Path

from utils.args import DataArguments, EvalArguments, ModelArguments, StorageArguments, StudentArguments, TeacherArguments, parse_args
from utils.data import load_data
from utils.errors import cli_entry
from utils.evaluation import TEACHER, evaluate_models, load_reference
from utils.experiment import retrained_model_dir, start
from utils.model_io import load_simplified
from utils.teacher import load_teacher


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    groups = [TeacherArguments, ModelArguments, StudentArguments, DataArguments, StorageArguments, EvalArguments]
    args = parse_args(groups, __doc__, argv)
    device = start(args)
    model_dir = Path(args.model or retrained_model_dir(args.storage_directory, args.block_heads, args.block_d_k))
    teacher = load_teacher(args.teacher, device)
    model, _, _ = load_simplified(model_dir, device)
    data = load_data(args, teacher.tokenizer)
    output_dir = Path(args.storage_directory) / "results" / model_dir.name
    return evaluate_models({TEACHER: teacher.model, model_dir.name: model}, data.test, teacher.tokenizer, args, device,
                           output_dir, reference=load_reference(args.reference, device))  # fmt: skip


if __name__ == "__main__":
    main()
