"""Finetune the assembled retrained model end to end by distillation on the teacher's MLM outputs.

Trains every student attention (``--train_ffn`` also the feed-forwards and LayerNorms; ``--train_layers`` every
layer whole) of the model the notebook assembled, or of any saved simplified model, and saves the result as a
new model folder. Several ``--model`` folders heal in lockstep: every batch drawn once and the teacher run once
for all of them, each model in its own run, ending as it would healed alone (a study heals its models so).
"""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from models import select_trainable
from utils.args import (
    FINETUNE_FLAGS,
    ExportArguments,
    StudentArguments,
    TeacherArguments,
    flag,
    require,
)
from utils.data import load_data
from utils.experiment import cli_entry, parse_and_start
from utils.finetune import Healing, heal_and_save
from utils.identity import variant
from utils.model_io import model_fingerprint
from utils.runs import already_finished, finetune_run
from utils.storage import Storage
from utils.teacher import inspect_teacher, load_teacher


@dataclass
class HealedModelsArguments:
    attribute = "model"

    model: Optional[list[str]] = flag(
        None,
        "Folders of saved simplified models (default: the one the pipeline step before wrote); several heal in "
        "lockstep, one teacher forward per batch.",
    )


@dataclass
class FinetuneArguments:
    attribute = "finetune"

    train_ffn: bool = flag(False, "Also train every layer's feed-forward and LayerNorms.")
    train_layers: bool = flag(
        False,
        "Train every encoder layer whole (attention, feed-forward, LayerNorms), as drop_layers.py and "
        "finetune_fully_merged.py heal: the same healing for every model of a comparison across methods.",
    )
    output_model: Optional[list[str]] = flag(
        None,
        "Folder of each finetuned model, one per --model (default: --model with suffix _finetuned and the "
        "healing's variant).",
    )

    def __post_init__(self):
        require(not (self.train_ffn and self.train_layers), "--train_ffn: already part of --train_layers; pass one")


GROUPS = [
    TeacherArguments, HealedModelsArguments, StudentArguments, FinetuneArguments, *FINETUNE_FLAGS, ExportArguments
]  # fmt: skip
DEFAULTS = {"lr": 1e-4, "epochs": 1}


def _trainable(student, flags) -> dict:
    """Mark what heals (--train_ffn, --train_layers); what the saved model records of it."""
    options = flags.finetune
    select_trainable(student, feed_forward=options.train_ffn, every_layer=options.train_layers)
    return {"train_ffn": options.train_ffn, "train_layers": options.train_layers}


@cli_entry
def main(argv: list[str] | None = None) -> list[dict] | list[list[dict]]:
    """The healed model's metric records; with several ``--model``, each one's, in their order."""
    flags, device = parse_and_start(GROUPS, __doc__, argv, **DEFAULTS)
    storage, options = Storage(flags.storage.storage_directory), flags.finetune
    default = storage.retrained_model(flags.student.block_heads, flags.student.block_d_k)
    model_dirs = [Path(model) for model in flags.model.model or [default]]
    outputs = options.output_model
    require(outputs is None or len(outputs) == len(model_dirs),
            f"--output_model: one folder per --model ({len(model_dirs)}), got {len(outputs or [])}")  # fmt: skip
    require(flags.export.export_hf is None or len(model_dirs) == 1, "--export_hf: one --model only")
    suffix = variant(flags.groups)  # -ffn, -t4: how it is healed
    info = inspect_teacher(flags.teacher.teacher, flags.data.seq_len)
    healings = []
    for index, model_dir in enumerate(model_dirs):
        output = Path(outputs[index]) if outputs else model_dir.parent / f"{model_dir.name}_finetuned{suffix}"
        # each model's run has the flags a run healing it alone would have
        alone = flags.replacing({
            HealedModelsArguments: HealedModelsArguments([str(model_dir)]),
            FinetuneArguments: replace(options, output_model=[str(output)]),
        })  # fmt: skip
        # the model by path and by content: one rebuilt in place is not taken for the one healed before
        run = finetune_run(alone, info, model_dir.name + suffix, model=str(model_dir.resolve()),
                           model_fingerprint=model_fingerprint(model_dir))  # fmt: skip
        healings.append(Healing(alone, run, model_dir, output))
    pending = [healing for healing in healings if not already_finished(healing.run, healing.flags, healing.output)]
    if pending:
        teacher = load_teacher(info, device)
        data = load_data(flags.data, teacher.tokenizer)
        heal_and_save(pending, teacher, data, flags, device, _trainable)
    histories = [healing.run.read_metrics() for healing in healings]
    return histories[0] if len(histories) == 1 else histories


if __name__ == "__main__":
    main()
