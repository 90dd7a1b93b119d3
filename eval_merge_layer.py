"""Evaluate the teacher with one pair of layers (block, block+1) replaced by its merged layer, with all
metrics of eval_retrained_12.py (written to the storage directory's results, under the run's name)."""

from models import assemble
from utils.args import (
    EVAL_FLAGS,
    BlockArguments,
    MergeArguments,
    StudentArguments,
    TeacherArguments,
    parse_args,
)
from utils.assembly import merged_layer_from_state
from utils.data import load_data
from utils.evaluation import evaluate_against_teacher
from utils.experiment import cli_entry, start
from utils.model_io import load_block_checkpoint
from utils.runs import run_variant
from utils.storage import Storage
from utils.teacher import load_teacher

# --merge_init picks the merge runs, as it named them
GROUPS = [TeacherArguments, BlockArguments, StudentArguments, MergeArguments, *EVAL_FLAGS]


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    flags = parse_args(GROUPS, __doc__, argv)
    device = start(flags, flags.data.seed)
    teacher = load_teacher(flags.teacher.teacher, device)
    block, heads, d_k = flags.block.block, flags.student.block_heads, flags.student.block_d_k
    teacher.check_layer(block, pair=True)
    storage = Storage(flags.storage.storage_directory)
    checkpoint = storage.block_output("merge", block, heads, d_k, run_variant(flags, "merge"))
    state = load_block_checkpoint(checkpoint, heads, d_k, flag="merged-layer checkpoint")
    merged = merged_layer_from_state(state, teacher.model, block).to(device)
    name = checkpoint.parent.name
    model = assemble(teacher.model, merged={block: merged}).eval()
    data = load_data(flags.data, teacher.tokenizer)
    meta = {"method": "merged_pair", "merge_init": flags.merge.merge_init}
    return evaluate_against_teacher(
        flags.eval,
        flags.data,
        teacher,
        {name: model},
        getattr(data, flags.eval.split),
        device,
        storage.results(name),
        {name: meta},
    )


if __name__ == "__main__":
    main()
