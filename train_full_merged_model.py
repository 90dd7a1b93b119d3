"""Finetune the assembled retrained model end to end by distillation on the teacher's MLM outputs.

Trains every student attention (``--train_ffn`` also the feed-forwards and LayerNorms; ``--train_layers`` every
layer whole) of the model the notebook assembled, or of any saved simplified model, and saves the result as a
new model folder.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from models import select_trainable
from utils.args import (
    FINETUNE_FLAGS,
    ExportArguments,
    ModelArguments,
    StudentArguments,
    TeacherArguments,
    flag,
    require,
)
from utils.data import load_data
from utils.experiment import cli_entry, parse_and_start
from utils.finetune import finetune_and_save
from utils.identity import variant
from utils.model_io import load_simplified
from utils.runs import already_finished, finetune_run
from utils.storage import Storage
from utils.teacher import inspect_teacher, load_teacher


@dataclass
class FinetuneArguments:
    attribute = "finetune"

    train_ffn: bool = flag(False, "Also train every layer's feed-forward and LayerNorms.")
    train_layers: bool = flag(
        False,
        "Train every encoder layer whole (attention, feed-forward, LayerNorms), as drop_layers.py and "
        "finetune_fully_merged.py heal: the same healing for every model of a comparison across methods.",
    )
    output_model: Optional[str] = flag(
        None, "Folder of the finetuned model (default: --model with suffix _finetuned and the healing's variant)."
    )

    def __post_init__(self):
        require(not (self.train_ffn and self.train_layers), "--train_ffn: already part of --train_layers; pass one")


GROUPS = [TeacherArguments, ModelArguments, StudentArguments, FinetuneArguments, *FINETUNE_FLAGS, ExportArguments]


@cli_entry
def main(argv: list[str] | None = None) -> list[dict]:
    flags, device = parse_and_start(GROUPS, __doc__, argv, lr=1e-4, epochs=1)
    storage, options = Storage(flags.storage.storage_directory), flags.finetune
    model_dir = Path(flags.model.model or storage.retrained_model(flags.student.block_heads, flags.student.block_d_k))
    healing = variant(flags.groups)  # -ffn, -t4: how it is healed
    output = Path(options.output_model or model_dir.parent / f"{model_dir.name}_finetuned{healing}")
    info = inspect_teacher(flags.teacher.teacher, flags.data.seq_len)
    run = finetune_run(flags, info, model_dir.name + healing, model=str(model_dir.resolve()))
    if already_finished(run, flags, output):
        return run.read_metrics()
    teacher = load_teacher(info, device)
    student, _, meta = load_simplified(model_dir, device)
    select_trainable(student, feed_forward=options.train_ffn, every_layer=options.train_layers)
    data = load_data(flags.data, teacher.tokenizer)
    trained = {"train_ffn": options.train_ffn, "train_layers": options.train_layers}
    meta = {**meta, "finetuned_from": str(model_dir), **trained}
    return finetune_and_save(student, teacher, data, flags, device, run, output, meta)


if __name__ == "__main__":
    main()
