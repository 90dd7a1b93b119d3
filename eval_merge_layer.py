"""Evaluate the teacher with one pair of layers (block, block+1) replaced by its merged layer, with all
metrics of eval_retrained_12.py (written under {storage}/results/merge_{block}_{d_k}_{heads}/)."""
from pathlib import Path

from models import assemble
from utils.args import (
    BlockArguments, DataArguments, EvalArguments, StorageArguments, StudentArguments, TeacherArguments, parse_args,
)  # fmt: skip
from utils.assembly import merged_layer_from_state, run_checkpoint
from utils.data import load_data
from utils.errors import cli_entry
from utils.evaluation import TEACHER, evaluate_models, load_reference
from utils.experiment import block_run_name, start
from utils.model_io import load_block_checkpoint
from utils.teacher import load_teacher


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    groups = [TeacherArguments, BlockArguments, StudentArguments, DataArguments, StorageArguments, EvalArguments]
    args = parse_args(groups, __doc__, argv)
    device = start(args)
    teacher = load_teacher(args.teacher, device)
    teacher.check_layer(args.block, pair=True)
    checkpoint = run_checkpoint(args.storage_directory, "merge", args.block, args.block_d_k, args.block_heads)
    state = load_block_checkpoint(checkpoint, args.block_heads, args.block_d_k, flag="merged-layer checkpoint")
    merged = merged_layer_from_state(state, teacher.model, args.block).to(device)
    name = block_run_name("merge", args.block, args.block_d_k, args.block_heads)
    model = assemble(teacher.model, merged={args.block: merged}).eval()
    data = load_data(args, teacher.tokenizer)
    return evaluate_models({TEACHER: teacher.model, name: model}, data.test, teacher.tokenizer, args, device,
                           Path(args.storage_directory) / "results" / name, load_reference(args.reference, device))  # fmt: skip


if __name__ == "__main__":
    main()
