"""Evaluate a simplified model against its teacher (and a larger reference) on masked WikiText-2 test sentences.

Reports top-1/5/10 accuracy, agreement with the teacher, KL(teacher || model), the reference score,
parameters, FLOPs per token and latency; writes metrics.json, metrics.md and predictions.tsv.

``--models A B ...`` evaluates several saved models on the same masks in one pass (the teacher runs once),
into the results folder ``--evaluation`` (default: the first model's name).
"""

from pathlib import Path

from utils.args import (
    SAVED_MODELS_EVAL_FLAGS,
    DistillationArguments,
    ModelArguments,
    StudentArguments,
    StudentInitArguments,
)
from utils.evaluation import evaluate_saved_models
from utils.experiment import cli_entry, parse_and_start
from utils.runs import run_variant
from utils.storage import Storage

# the student flags name the assembled model evaluated by default: the one made of the block runs they trained
GROUPS = [ModelArguments, StudentArguments, StudentInitArguments, DistillationArguments, *SAVED_MODELS_EVAL_FLAGS]


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    flags, device = parse_and_start(GROUPS, __doc__, argv)
    storage = Storage(flags.storage.storage_directory)
    default = storage.retrained_model(flags.student.block_heads, flags.student.block_d_k, run_variant(flags, "block"))
    folders = [Path(folder) for folder in flags.evaluation_set.models or [flags.model.model or default]]
    output_dir = storage.results(flags.evaluation_set.evaluation or folders[0].name)
    return evaluate_saved_models(flags, folders, device, output_dir)


if __name__ == "__main__":
    main()
