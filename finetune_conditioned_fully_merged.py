"""Train merged layers conditionally: the layer of pair (block, block+1) sees the outputs of the merged
layers already trained before it (not the teacher's hidden states) and learns the teacher's state after
layer block+1. ``--all`` trains the whole chain in order, each pair conditioned on the ones before.

Each pair's layer warm-starts from its retrain_merge checkpoint when there is one (else --merge_init);
checkpoints go to the pair's ``conditioned_{block}_{d_k}_{heads}{variant}`` run.
"""

from dataclasses import dataclass
from typing import Optional

from models import assemble
from utils.args import (
    RUN_FLAGS,
    DropoutArguments,
    MergeArguments,
    StudentArguments,
    TeacherArguments,
    flag,
    require,
)
from utils.assembly import collect_merged_layers
from utils.data import load_data
from utils.errors import UserError
from utils.experiment import cli_entry, parse_and_start
from utils.merging import train_merged_layer
from utils.model_io import load_block_checkpoint
from utils.runs import already_finished, merge_run, run_variant
from utils.storage import Storage
from utils.teacher import inspect_teacher, load_teacher


@dataclass
class ChainArguments:
    attribute = "chain"

    block: Optional[int] = flag(None, "First layer of the pair to train (even: pairs are 0-1, 2-3, ...).")
    all: bool = flag(False, "Train every pair in order, each conditioned on the merged layers before it.")

    def __post_init__(self):
        require(self.all != (self.block is not None), "give exactly one of --block B and --all")


GROUPS = [TeacherArguments, ChainArguments, StudentArguments, DropoutArguments, MergeArguments, *RUN_FLAGS]


@cli_entry
def main(argv: list[str] | None = None) -> dict[int, list[dict]]:
    flags, device = parse_and_start(GROUPS, __doc__, argv)
    info = inspect_teacher(flags.teacher.teacher, flags.data.seq_len)
    chain, heads, d_k = flags.chain, flags.student.block_heads, flags.student.block_d_k
    pairs = list(range(0, info.num_layers - 1, 2))
    if not chain.all:
        info.check_layer(chain.block, pair=True)
        if chain.block % 2:
            raise UserError(f"--block {chain.block}: conditioned pairs start at even layers ({pairs})")
        pairs = [chain.block]
    storage = Storage(flags.storage.storage_directory)
    warm_paths = {
        block: storage.block_output("merge", block, heads, d_k, run_variant(flags, "merge")) for block in pairs
    }
    # where each pair starts is part of its run: its merge run's checkpoint when there is one, else --merge_init
    warm_starts = {block: str(path.resolve()) if path.exists() else "none" for block, path in warm_paths.items()}
    runs = {block: merge_run(flags, info, block, "conditioned", warm_start=warm_starts[block]) for block in pairs}
    pending = [block for block in pairs if not already_finished(runs[block], flags)]
    if not pending:
        return {block: run.read_metrics() for block, run in runs.items()}
    teacher = load_teacher(info, device)
    data = load_data(flags.data, teacher.tokenizer)

    histories = {block: runs[block].read_metrics() for block in pairs if block not in pending}
    for block in pending:
        earlier, _, missing = collect_merged_layers(
            storage.root,
            teacher.model,
            teacher.name,
            heads,
            d_k,
            "conditioned",
            block,
            run_variant(flags, "conditioned"),
        )
        if missing:
            names = ", ".join(f"{b}-{b + 1}" for b in missing)
            raise UserError(
                f"--block {block}: the conditioned layers of pairs {names} are missing; train them first (or use --all)"
            )
        prefix = assemble(teacher.model, merged={b: layer.to(device) for b, layer in earlier.items()}).eval()
        warm = warm_starts[block]
        warm_start = load_block_checkpoint(warm, heads, d_k)["model"] if warm != "none" else None
        histories[block] = train_merged_layer(
            teacher, block, flags, device, data, runs[block], prefix, prefix_stop=len(earlier), warm_start=warm_start
        )
    return dict(sorted(histories.items()))


if __name__ == "__main__":
    main()
