"""Train merged layers conditionally: the layer of pair (block, block+1) sees the outputs of the merged
layers already trained before it (not the teacher's hidden states) and learns the teacher's state after
layer block+1. ``--all`` trains the whole chain in order, each pair conditioned on the ones before.

Each pair's layer warm-starts from its retrain_merge checkpoint when there is one (else --merge_init);
checkpoints go to ``.../conditioned_{block}_{d_k}_{heads}/``.
"""
from dataclasses import dataclass
from typing import Optional

from models import assemble
from utils.args import (
    DataArguments, DropoutArguments, MergeArguments, StorageArguments, StudentArguments, TeacherArguments,
    TrainingArguments, flag, parse_args,
)  # fmt: skip
from utils.assembly import collect_merged_layers, run_checkpoint
from utils.data import load_data
from utils.errors import UserError, cli_entry
from utils.experiment import start
from utils.merging import train_merged_layer
from utils.model_io import load_block_checkpoint
from utils.teacher import load_teacher


@dataclass
class ChainArguments:
    block: Optional[int] = flag(None, "First layer of the pair to train (even: pairs are 0-1, 2-3, ...).")
    all: bool = flag(False, "Train every pair in order, each conditioned on the merged layers before it.")


@cli_entry
def main(argv: list[str] | None = None) -> dict[int, list[dict]]:
    groups = [TeacherArguments, ChainArguments, StudentArguments, DropoutArguments, MergeArguments, DataArguments,
              StorageArguments, TrainingArguments]  # fmt: skip
    args = parse_args(groups, __doc__, argv)
    if args.all == (args.block is not None):
        raise UserError("give exactly one of --block B and --all")
    device = start(args)
    teacher = load_teacher(args.teacher, device)
    pairs = list(range(0, teacher.num_layers - 1, 2))
    if not args.all:
        teacher.check_layer(args.block, pair=True)
        if args.block % 2:
            raise UserError(f"--block {args.block}: conditioned pairs start at even layers ({pairs})")
        pairs = [args.block]
    data = load_data(args, teacher.tokenizer)

    histories = {}
    for block in pairs:
        earlier, _, missing = collect_merged_layers(args.storage_directory, teacher.model, teacher.name, args.block_heads,
                                                    args.block_d_k, kind="conditioned", below=block)  # fmt: skip
        if missing:
            names = ", ".join(f"{b}-{b + 1}" for b in missing)
            raise UserError(f"--block {block}: the conditioned layers of pairs {names} are missing; train them first "
                            f"(or use --all)")  # fmt: skip
        prefix = assemble(teacher.model, merged={b: layer.to(device) for b, layer in earlier.items()}).eval()
        warm = run_checkpoint(args.storage_directory, "merge", block, args.block_d_k, args.block_heads)
        warm_start = load_block_checkpoint(warm, args.block_heads, args.block_d_k)["model"] if warm.exists() else None
        _, histories[block] = train_merged_layer(teacher, block, args, device, data, "conditioned", prefix,
                                                 prefix_stop=len(earlier), warm_start=warm_start)  # fmt: skip
    return histories


if __name__ == "__main__":
    main()
