"""Head pruning without training (Michel et al. 2019): rank the teacher's heads by the accumulated
|gradient of the MLM loss w.r.t. a per-head gate| on validation sentences, keep the ``--block_heads`` most
important per layer (``--per_layer``) or the same total chosen across layers, and save the result as a
simplified model (student attentions with the teacher's head size, zero training steps) that every
evaluation, finetuning script and the export take.

Example: python prune_heads.py --teacher storage/teacher --block_heads 6 --per_layer
"""

from dataclasses import dataclass

from models import assemble, attention_of_heads
from utils.args import CUT_FLAGS, TeacherArguments, flag, require
from utils.data import eval_loader, load_data
from utils.experiment import cli_entry, log, parse_and_start
from utils.model_io import save_and_export
from utils.pruning import check_fewer_than_teacher, head_importance, heads_to_keep
from utils.storage import Storage
from utils.teacher import inspect_teacher, load_teacher

IMPORTANCE_BATCH = 64


@dataclass
class PruneArguments:
    attribute = "prune"

    block_heads: int = flag(None, "Heads kept per layer (on average, with the global choice).", required=True)
    per_layer: bool = flag(False, "Keep the same number of heads in every layer (default: choose across layers).")
    importance_sentences: int = flag(2000, "Validation sentences the importance is accumulated over.")

    def __post_init__(self):
        require(self.block_heads > 0, f"--block_heads must be positive, got {self.block_heads}")
        require(
            self.importance_sentences > 0, f"--importance_sentences must be positive, got {self.importance_sentences}"
        )


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    flags, device = parse_and_start([TeacherArguments, PruneArguments, *CUT_FLAGS], __doc__, argv)
    options = flags.prune
    info = inspect_teacher(flags.teacher.teacher, flags.data.seq_len)
    check_fewer_than_teacher(info.config, block_heads=options.block_heads)
    teacher = load_teacher(info, device)
    data = load_data(flags.data, teacher.tokenizer)
    loader = eval_loader(data.validation, IMPORTANCE_BATCH, options.importance_sentences)
    importance = head_importance(teacher.model, loader, device)
    kept = heads_to_keep(importance, options.block_heads, options.per_layer)
    attentions = {
        index: attention_of_heads(layer.attention, heads, layer.attention.dropout)
        for index, (layer, heads) in enumerate(zip(teacher.model.layers, kept, strict=True))
    }
    model = assemble(teacher.model, attentions=attentions).eval()
    d_k = teacher.model.layers[0].attention.d_k
    output = Storage(flags.storage.storage_directory).pruned_model(options.block_heads, d_k, options.per_layer)
    meta = {"teacher": teacher.name, "method": "head_pruning", "kept_heads": kept, "importance": importance.tolist()}
    save_and_export(model, teacher.tokenizer, output, meta, flags.export.export_hf)
    log.info("kept heads per layer %s; saved to %s", [len(heads) for heads in kept], output)
    return {"output": str(output), "kept_heads": kept, "importance": importance.tolist()}


if __name__ == "__main__":
    main()
