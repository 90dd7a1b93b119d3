"""Evaluate a simplified model against its teacher (and a larger reference) on masked WikiText-2 test sentences.

Reports top-1/5/10 accuracy, agreement with the teacher, KL(teacher || model), the reference score,
parameters, FLOPs per token and latency; writes metrics.json, metrics.md and predictions.tsv.

``--models A B ...`` evaluates several saved models on the same masks in one pass (the teacher runs once),
into the results folder ``--evaluation`` (default: the first model's name).
"""

from pathlib import Path

from utils.args import (
    EVAL_FLAGS,
    DistillationArguments,
    EvaluationSetArguments,
    ModelArguments,
    StudentArguments,
    StudentInitArguments,
    TeacherArguments,
    parse_args,
)
from utils.data import load_data
from utils.evaluation import evaluate_against_teacher
from utils.experiment import cli_entry, start
from utils.model_io import load_models
from utils.runs import run_variant
from utils.storage import Storage
from utils.teacher import load_teacher

# the student flags name the assembled model evaluated by default: the one made of the block runs they trained
GROUPS = [
    TeacherArguments,
    ModelArguments,
    EvaluationSetArguments,
    StudentArguments,
    StudentInitArguments,
    DistillationArguments,
    *EVAL_FLAGS,
]


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    flags = parse_args(GROUPS, __doc__, argv)
    device = start(flags, flags.data.seed)
    storage = Storage(flags.storage.storage_directory)
    default = storage.retrained_model(flags.student.block_heads, flags.student.block_d_k, run_variant(flags, "block"))
    folders = [Path(folder) for folder in flags.evaluation_set.models or [flags.model.model or default]]
    teacher = load_teacher(flags.teacher.teacher, device)
    models, metas = load_models(folders, device)
    data = load_data(flags.data, teacher.tokenizer)
    output_dir = storage.results(flags.evaluation_set.evaluation or folders[0].name)
    return evaluate_against_teacher(flags.eval, flags.data, teacher, models, data.test, device, output_dir, metas)


if __name__ == "__main__":
    main()
