"""Compose the fully merged model (every pair 0-1, 2-3, ... replaced by its merged layer; an odd last
layer stays the teacher's; half the depth) and finetune it end to end by distillation on the teacher's
MLM outputs. ``--baseline layer_drop`` instead finetunes the teacher with half its layers dropped (``--drop``:
every second one by default, or the top ones, the least influential, or the most similar contiguous block),
with the same budget, as the layer-reduction baseline.
"""

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from models import assemble, layers_to_drop
from utils.args import (
    FINETUNE_FLAGS,
    ExportArguments,
    MergeArguments,
    StudentArguments,
    TeacherArguments,
    flag,
    parse_args,
)
from utils.assembly import collect_merged_layers
from utils.data import eval_loader, load_data
from utils.errors import UserError, cli_entry
from utils.experiment import log, start
from utils.finetune import finetune_and_save
from utils.identity import variant
from utils.metrics import hidden_state_similarity
from utils.runs import already_finished, finetune_run, run_variant
from utils.storage import Storage
from utils.teacher import inspect_teacher, load_teacher


@dataclass
class FullyMergedArguments:
    source: Literal["merge", "conditioned"] = flag(
        "merge", "Merged layers from retrain_merge runs ('merge') or finetune_conditioned_fully_merged runs."
    )
    baseline: Optional[Literal["layer_drop"]] = flag(
        None, "Finetune the layer-drop baseline instead of the merged model."
    )
    drop: Literal["alternate", "top", "influence", "angular"] = flag(
        "alternate",
        "With --baseline layer_drop, which half of the layers to drop: every second one (the seed's), the top ones, "
        "the least influential (1 - cos(input, output), ShortGPT) or the contiguous block with the smallest angular "
        "distance (Gromov et al.), measured on --eval_sentences validation sentences. --epochs 0: no healing.",
    )
    output_model: Optional[str] = flag(None, "Folder of the finetuned model (default: the storage directory's models).")


# --merge_init picks the merge (or conditioned) runs the model is made of, as it named them
GROUPS = [
    TeacherArguments,
    StudentArguments,
    MergeArguments,
    FullyMergedArguments,
    *FINETUNE_FLAGS,
    ExportArguments,
]


@cli_entry
def main(argv: list[str] | None = None) -> list[dict]:
    flags = parse_args(GROUPS, __doc__, argv, lr=1e-4, epochs=1)
    device = start(flags, flags.data.seed)
    info = inspect_teacher(flags.teacher.teacher, flags.data.seq_len)
    storage, options = Storage(flags.storage.storage_directory), flags.fully_merged
    heads, d_k = flags.student.block_heads, flags.student.block_d_k
    layer_drop = options.baseline == "layer_drop"
    if layer_drop:  # named by its rule and its healing
        default_output = storage.layer_drop_model(options.drop, variant([flags.output_distillation]))
    else:  # named by its merged runs and its healing
        default_output = storage.merged_model(heads, d_k, options.source, variant(flags.groups))
    output = Path(options.output_model or default_output)
    run = finetune_run(flags, info, default_output.name)
    if already_finished(run, flags, output):
        return run.read_metrics()
    teacher = load_teacher(info, device)
    data = load_data(flags.data, teacher.tokenizer)
    if layer_drop:
        similarity = None
        if options.drop in ("influence", "angular"):
            valid = eval_loader(data.validation, flags.training.batch_size, flags.training.eval_sentences)
            similarity = hidden_state_similarity(teacher.model, valid, device)
        dropped = layers_to_drop(options.drop, teacher.num_layers, teacher.num_layers // 2, similarity)
        log.info("--drop %s removes teacher layers %s", options.drop, dropped)
        student = assemble(teacher.model, dropped=set(dropped))
        meta = {"drop_rule": options.drop, "dropped_teacher_layers": dropped}
    else:
        merged_runs = run_variant(flags, options.source)
        layers, sources, missing = collect_merged_layers(
            storage.root, teacher.model, teacher.name, heads, d_k, kind=options.source, variant=merged_runs
        )
        if missing:
            pairs = ", ".join(f"{b}-{b + 1}" for b in missing)
            script = (
                "retrain_merge.py --block B"
                if options.source == "merge"
                else "finetune_conditioned_fully_merged.py --all"
            )
            raise UserError(
                f"no {options.source}{merged_runs} checkpoint (heads {heads}, d_k {d_k}) for pairs {pairs} under "
                f"{storage.root}; run {script} first"
            )
        student = assemble(teacher.model, merged=layers)
        meta = {"sources": {b: str(path) for b, path in sources.items()}}
    # an independent copy: finetuning (and its dropout) must not touch the teacher's shared modules
    student = copy.deepcopy(student).to(device).requires_grad_(False)
    student.layers.requires_grad_(True)  # all encoder layers; embeddings and MLM head stay frozen
    return finetune_and_save(student, teacher, data, flags, device, run, output, meta)


if __name__ == "__main__":
    main()
