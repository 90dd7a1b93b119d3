"""Compose the fully merged model (every pair 0-1, 2-3, ... replaced by its merged layer; an odd last
layer stays the teacher's; half the depth) and finetune it end to end by distillation on the teacher's
MLM outputs. ``--baseline layer_drop`` instead finetunes the teacher with every second layer dropped
(layers 1, 3, 5, ... removed), with the same budget, as the layer-reduction baseline.
"""
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from models import assemble
from utils.args import (
    DataArguments, OutputDistillationArguments, StorageArguments, StudentArguments, TeacherArguments,
    TrainingArguments, flag, parse_args,
)  # fmt: skip
from utils.assembly import collect_merged_layers
from utils.data import load_data
from utils.errors import UserError, cli_entry
from utils.experiment import LAYER_DROP_MODEL, merged_model_dir, start
from utils.finetune import finetune_and_save
from utils.teacher import load_teacher


@dataclass
class FullyMergedArguments:
    source: Literal["merge", "conditioned"] = flag(
        "merge", "Merged layers from retrain_merge runs ('merge') or finetune_conditioned_fully_merged runs.")
    baseline: Optional[Literal["layer_drop"]] = flag(None, "Finetune the layer-drop baseline instead of the merged model.")
    output_model: Optional[str] = flag(None, "Folder of the finetuned model (default {storage}/models/<name>).")


@cli_entry
def main(argv: list[str] | None = None) -> list[dict]:
    groups = [TeacherArguments, StudentArguments, FullyMergedArguments, OutputDistillationArguments, DataArguments,
              StorageArguments, TrainingArguments]  # fmt: skip
    args = parse_args(groups, __doc__, argv, lr=1e-4, epochs=1)
    device = start(args)
    teacher = load_teacher(args.teacher, device)
    if args.baseline == "layer_drop":
        dropped = set(range(1, teacher.num_layers, 2))
        student = assemble(teacher.model, dropped=dropped)
        name, meta = LAYER_DROP_MODEL, {"dropped_teacher_layers": sorted(dropped)}
    else:
        layers, sources, missing = collect_merged_layers(args.storage_directory, teacher.model, teacher.name,
                                                         args.block_heads, args.block_d_k, kind=args.source)  # fmt: skip
        if missing:
            pairs = ", ".join(f"{b}-{b + 1}" for b in missing)
            script = "retrain_merge.py --block B" if args.source == "merge" else "finetune_conditioned_fully_merged.py --all"
            raise UserError(f"no {args.source} checkpoint (heads {args.block_heads}, d_k {args.block_d_k}) for pairs "
                            f"{pairs} under {args.storage_directory}; run {script} first")  # fmt: skip
        student = assemble(teacher.model, merged=layers)
        name = merged_model_dir(args.storage_directory, args.block_heads, args.block_d_k, args.source).name
        meta = {"sources": {b: str(path) for b, path in sources.items()}}
    # an independent copy: finetuning (and its dropout) must not touch the teacher's shared modules
    student = copy.deepcopy(student).to(device).requires_grad_(False)
    student.layers.requires_grad_(True)  # all encoder layers; embeddings and MLM head stay frozen
    output = Path(args.output_model or Path(args.storage_directory) / "models" / name)
    data = load_data(args, teacher.tokenizer)
    identity = {"teacher": teacher.name, "model": name, "seq_len": args.seq_len}
    return finetune_and_save(student, teacher, data, args, device, f"finetune_{name}", identity, output, meta)


if __name__ == "__main__":
    main()
