"""Layer dropping, the field's depth baseline: the teacher without ``--drop_count`` layers (default: half)
chosen by the rule ``--drop``, healed end to end by distillation on the teacher's MLM outputs (``--epochs 0``:
not healed), saved as ``layer_drop[_{rule}][_{count}]`` (the same model and run as
``finetune_fully_merged.py --baseline layer_drop`` for half the layers).

Example (offline): python drop_layers.py --teacher storage/teacher --drop influence --drop_count 4 --epochs 1
"""

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from utils.args import FINETUNE_FLAGS, ExportArguments, LayerDropArguments, TeacherArguments, flag, parse_args
from utils.data import load_data
from utils.errors import UserError
from utils.experiment import cli_entry, start
from utils.finetune import finetune_and_save, layer_drop_identity, layer_drop_model
from utils.identity import variant
from utils.runs import already_finished, finetune_run
from utils.storage import Storage
from utils.teacher import inspect_teacher, load_teacher


@dataclass
class DropCountArguments:
    attribute = "drop_count"

    drop_count: Optional[int] = flag(None, "How many layers to drop (default: half the teacher's, rounded down).")
    output_model: Optional[str] = flag(None, "Folder of the model (default: the storage directory's models).")


GROUPS = [TeacherArguments, LayerDropArguments, DropCountArguments, *FINETUNE_FLAGS, ExportArguments]


@cli_entry
def main(argv: list[str] | None = None) -> list[dict]:
    flags = parse_args(GROUPS, __doc__, argv, lr=1e-4, epochs=1)
    device = start(flags, flags.data.seed)
    info = inspect_teacher(flags.teacher.teacher, flags.data.seq_len)
    rule, count = flags.layer_drop.drop, flags.drop_count.drop_count or info.num_layers // 2
    if not 0 < count < info.num_layers:
        raise UserError(
            f"--drop_count {count}: the teacher has {info.num_layers} layers, expected 1..{info.num_layers - 1}"
        )
    default_output = Storage(flags.storage.storage_directory).layer_drop_model(rule, variant(flags.groups))
    output = Path(flags.drop_count.output_model or default_output)
    run = finetune_run(flags, info, default_output.name, **layer_drop_identity(rule, flags.training))
    if already_finished(run, flags, output):
        return run.read_metrics()
    teacher = load_teacher(info, device)
    data = load_data(flags.data, teacher.tokenizer)
    training = flags.training
    student, meta = layer_drop_model(teacher, rule, count, data, training.batch_size, training.eval_sentences, device)
    # an independent copy: healing (and its dropout) must not touch the teacher's shared modules
    student = copy.deepcopy(student).to(device).requires_grad_(False)
    student.layers.requires_grad_(True)  # every kept layer; embeddings and MLM head stay frozen
    return finetune_and_save(student, teacher, data, flags, device, run, output, meta)


if __name__ == "__main__":
    main()
