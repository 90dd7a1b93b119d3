"""Evaluate fully merged models against the teacher on the same test masks: the finetuned merged model,
its conditioned variant and the layer-drop baseline, whichever exist (or the folders given with
--models), with all metrics, parameters, FLOPs per token and latency. Results go to
{storage}/results/fully_merged_{d_k}_{heads}/."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from utils.args import DataArguments, EvalArguments, StorageArguments, StudentArguments, TeacherArguments, parse_args
from utils.data import load_data
from utils.errors import UserError, cli_entry
from utils.evaluation import TEACHER, evaluate_models, load_reference
from utils.experiment import LAYER_DROP_MODEL, merged_model_dir, start
from utils.model_io import is_simplified, load_simplified
from utils.teacher import load_teacher


@dataclass
class ModelsArguments:
    models: Optional[list[str]] = field(default=None, metadata={
        "help": "Saved model folders to evaluate (default: models/merged_{d_k}_{heads}, its _conditioned variant and "
                "models/layer_drop under --storage_directory, those that exist)."})  # fmt: skip


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    groups = [TeacherArguments, ModelsArguments, StudentArguments, DataArguments, StorageArguments, EvalArguments]
    args = parse_args(groups, __doc__, argv)
    device = start(args)
    folders = [Path(folder) for folder in args.models or []]
    if not folders:
        candidates = [merged_model_dir(args.storage_directory, args.block_heads, args.block_d_k, source)
                      for source in ("merge", "conditioned")] + [Path(args.storage_directory) / "models" / LAYER_DROP_MODEL]
        folders = [folder for folder in candidates if is_simplified(folder)]
        if not folders:
            raise UserError(f"no fully merged model under {args.storage_directory}/models (looked for "
                            f"{', '.join(c.name for c in candidates)}); run finetune_fully_merged.py first")  # fmt: skip
    teacher = load_teacher(args.teacher, device)
    models = {TEACHER: teacher.model}
    for folder in folders:
        models[folder.name] = load_simplified(folder, device)[0]
    data = load_data(args, teacher.tokenizer)
    output_dir = Path(args.storage_directory) / "results" / f"fully_merged_{args.block_d_k}_{args.block_heads}"
    return evaluate_models(models, data.test, teacher.tokenizer, args, device, output_dir,
                           load_reference(args.reference, device))  # fmt: skip


if __name__ == "__main__":
    main()
