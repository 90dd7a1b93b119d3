"""Evaluate a simplified model against its teacher (and a larger reference) on masked WikiText-2 test sentences.

Reports top-1/5/10 accuracy, agreement with the teacher, KL(teacher || model), the reference score,
parameters, FLOPs per token and latency; writes metrics.json, metrics.md and predictions.tsv.
"""

from pathlib import Path

from utils.args import EVAL_FLAGS, ModelArguments, StudentArguments, TeacherArguments, parse_args
from utils.data import load_data
from utils.errors import cli_entry
from utils.evaluation import evaluate_against_teacher
from utils.experiment import start
from utils.model_io import load_simplified
from utils.storage import Storage
from utils.teacher import load_teacher


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    flags = parse_args([TeacherArguments, ModelArguments, StudentArguments, *EVAL_FLAGS], __doc__, argv)
    device = start(flags, flags.data.seed)
    storage = Storage(flags.storage.storage_directory)
    model_dir = Path(flags.model.model or storage.retrained_model(flags.student.block_heads, flags.student.block_d_k))
    teacher = load_teacher(flags.teacher.teacher, device)
    model, _, meta = load_simplified(model_dir, device)
    data = load_data(flags.data, teacher.tokenizer)
    output_dir, metas = storage.results(model_dir.name), {model_dir.name: meta}
    return evaluate_against_teacher(flags, teacher, {model_dir.name: model}, data.test, device, output_dir, metas)


if __name__ == "__main__":
    main()
