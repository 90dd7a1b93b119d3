"""Compose the fully merged model (every pair 0-1, 2-3, ... replaced by its merged layer; an odd last
layer stays the teacher's; half the depth) and finetune it end to end by distillation on the teacher's
MLM outputs. ``--baseline layer_drop`` instead finetunes the teacher with half its layers dropped by ``--drop``
(the original repository's command for the layer-reduction baseline; drop_layers.py is its own script), with the
same budget.
"""

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from models import assemble
from utils.args import (
    FINETUNE_FLAGS,
    ExportArguments,
    LayerDropArguments,
    MergeArguments,
    StudentArguments,
    TeacherArguments,
    flag,
    parse_args,
)
from utils.assembly import collect_merged_layers, merged_layer_paths
from utils.data import load_data
from utils.errors import UserError
from utils.experiment import cli_entry, start
from utils.finetune import finetune_and_save, layer_drop_identity, layer_drop_model
from utils.identity import variant
from utils.model_io import files_fingerprint
from utils.runs import already_finished, finetune_run, run_variant
from utils.storage import Storage
from utils.teacher import inspect_teacher, load_teacher


@dataclass
class FullyMergedArguments:
    attribute = "fully_merged"

    source: Literal["merge", "conditioned"] = flag(
        "merge", "Merged layers from retrain_merge runs ('merge') or finetune_conditioned_fully_merged runs."
    )
    baseline: Optional[Literal["layer_drop"]] = flag(
        None, "Finetune the layer-drop baseline instead of the merged model."
    )
    output_model: Optional[str] = flag(None, "Folder of the finetuned model (default: the storage directory's models).")


# --merge_init picks the merge (or conditioned) runs the model is made of, as it named them
GROUPS = [
    TeacherArguments,
    StudentArguments,
    MergeArguments,
    FullyMergedArguments,
    LayerDropArguments,
    *FINETUNE_FLAGS,
    ExportArguments,
]
DEFAULTS = {"lr": 1e-4, "epochs": 1}


@cli_entry
def main(argv: list[str] | None = None) -> list[dict]:
    flags = parse_args(GROUPS, __doc__, argv, **DEFAULTS)
    device = start(flags, flags.data.seed)
    info = inspect_teacher(flags.teacher.teacher, flags.data.seq_len)
    storage, options = Storage(flags.storage.storage_directory), flags.fully_merged
    heads, d_k = flags.student.block_heads, flags.student.block_d_k
    layer_drop = options.baseline == "layer_drop"
    merged_runs = run_variant(flags, options.source)
    if layer_drop:  # named by its rule and its healing; a similarity rule's layers depend on the sentences measured
        default_output = storage.layer_drop_model(flags.layer_drop.drop, variant([flags.output_distillation]))
        made_of = layer_drop_identity(flags.layer_drop.drop, flags.training)
    else:  # named by its merged runs and its healing; their checkpoints are part of the model, so a finished run
        # made from others (its merge students trained on since) is refused rather than taken for this one
        default_output = storage.merged_model(heads, d_k, options.source, variant(flags.groups))
        merged_paths = merged_layer_paths(
            storage.root, info.num_layers, heads, d_k, options.source, variant=merged_runs
        )
        made_of = {"merged_fingerprint": files_fingerprint([path for _, path in merged_paths])}
    output = Path(options.output_model or default_output)
    run = finetune_run(flags, info, default_output.name, **made_of)
    if already_finished(run, flags, output):
        return run.read_metrics()
    teacher = load_teacher(info, device)
    data = load_data(flags.data, teacher.tokenizer)
    if layer_drop:
        training = flags.training
        count = teacher.num_layers // 2
        student, meta = layer_drop_model(
            teacher, flags.layer_drop.drop, count, data, training.batch_size, training.eval_sentences, device
        )
    else:
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
        method = "merged_layers" if options.source == "merge" else "conditioned_merged_layers"
        meta = {
            "method": method,
            "merge_init": flags.merge.merge_init,
            "sources": {b: str(path) for b, path in sources.items()},
        }
    # an independent copy: finetuning (and its dropout) must not touch the teacher's shared modules
    student = copy.deepcopy(student).to(device).requires_grad_(False)
    student.layers.requires_grad_(True)  # all encoder layers; embeddings and MLM head stay frozen
    return finetune_and_save(student, teacher, data, flags, device, run, output, meta)


if __name__ == "__main__":
    main()
