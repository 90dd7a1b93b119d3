"""Evaluate fully merged models against the teacher on the same test masks: the finetuned merged model,
its conditioned variant and the layer-drop baseline, whichever exist (or the folders given with
--models), with all metrics, parameters, FLOPs per token and latency. Results go to the storage
directory's results, as fully_merged_{d_k}_{heads}."""

from pathlib import Path

from utils.args import SAVED_MODELS_EVAL_FLAGS, MergeArguments, OutputDistillationArguments, StudentArguments
from utils.errors import UserError
from utils.evaluation import evaluate_saved_models
from utils.experiment import cli_entry, parse_and_start
from utils.identity import variant
from utils.model_io import is_simplified
from utils.storage import Storage

# the flags finetune_fully_merged.py named its models by: the merged runs' and the healing's
GROUPS = [StudentArguments, MergeArguments, OutputDistillationArguments, *SAVED_MODELS_EVAL_FLAGS]


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    flags, device = parse_and_start(GROUPS, __doc__, argv)
    storage = Storage(flags.storage.storage_directory)
    heads, d_k = flags.student.block_heads, flags.student.block_d_k
    folders = [Path(folder) for folder in flags.evaluation_set.models or []]
    if not folders:
        merged, healing = variant(flags.groups), variant([flags.output_distillation])
        candidates = [storage.merged_model(heads, d_k, source, merged) for source in ("merge", "conditioned")]
        candidates.append(storage.layer_drop_model("alternate", healing))
        folders = [folder for folder in candidates if is_simplified(folder)]
        if not folders:
            looked_for = ", ".join(str(c) for c in candidates)
            raise UserError(f"no fully merged model (looked for {looked_for}); run finetune_fully_merged.py first")
    output_dir = (
        storage.results(flags.evaluation_set.evaluation)
        if flags.evaluation_set.evaluation
        else storage.fully_merged_results(heads, d_k, variant(flags.groups))
    )
    return evaluate_saved_models(flags, folders, device, output_dir)


if __name__ == "__main__":
    main()
