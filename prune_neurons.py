"""Feed-forward neuron pruning without training (the field's width baseline; Michel et al.'s gate importance,
Kwon et al. 2022's least-squares reconstruction): rank every layer's intermediate neurons by the accumulated
|gradient of the MLM loss w.r.t. a per-neuron gate| on validation sentences, keep ``--ffn_width`` per layer
(``--per_layer``) or the same total chosen across layers, and with ``--reconstruct`` refit each layer's output
projection by least squares so that the kept neurons reproduce the full feed-forward output on
``--calibration_sentences`` training sentences (``--reconstruct validated``: layer by layer on the pruned model's
own inputs, drawn toward the pruned weights as far as the layer's normalised output on held-out sentences asks).
Saves a simplified model every evaluation, healing script and the export take (a uniform width exports as plain
``BertForMaskedLM`` with a smaller ``intermediate_size``).

``--block_heads H`` also keeps each layer's H most important heads: head + neuron pruning at one budget.

Example: python prune_neurons.py --teacher storage/teacher --ffn_width 768 --per_layer --reconstruct
"""

from dataclasses import dataclass
from typing import Optional

from models import SimplifiedBert, attention_of_heads, feed_forward_of_neurons
from utils.args import CUT_FLAGS, TeacherArguments, flag, require
from utils.data import eval_loader, load_data
from utils.experiment import cli_entry, log, parse_and_start
from utils.model_io import save_and_export
from utils.pruning import (
    RECONSTRUCTION,
    calibration_loaders,
    check_fewer_than_teacher,
    head_importance,
    heads_to_keep,
    neuron_importance,
    neurons_to_keep,
)
from utils.storage import Storage
from utils.teacher import inspect_teacher, load_teacher

BATCH = 64


@dataclass
class NeuronPruneArguments:
    attribute = "neuron_prune"

    ffn_width: int = flag(
        None, "Feed-forward neurons kept per layer (on average, with the global choice).", required=True
    )
    per_layer: bool = flag(False, "Keep the same number of neurons in every layer (default: choose across layers).")
    reconstruct: Optional[str] = flag(
        None,
        RECONSTRUCTION.help("Refit each pruned layer's output projection (bare --reconstruct: least_squares)."),
        choices=RECONSTRUCTION.names(),
        nargs="?",
        const="least_squares",
    )
    importance_sentences: int = flag(2000, "Validation sentences the importance is accumulated over.")
    calibration_sentences: int = flag(
        512,
        "Training sentences a reconstruction is fitted on (a validated one scores its choices on the next as many).",
    )
    block_heads: Optional[int] = flag(
        None, "Also prune every layer's attention to its H most important heads (head + neuron pruning at one budget)."
    )

    def __post_init__(self):
        for name in ("ffn_width", "importance_sentences", "calibration_sentences", "block_heads"):
            value = getattr(self, name)
            require(value is None or value > 0, f"--{name} must be positive, got {value}")


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    flags, device = parse_and_start([TeacherArguments, NeuronPruneArguments, *CUT_FLAGS], __doc__, argv)
    options = flags.neuron_prune
    info = inspect_teacher(flags.teacher.teacher, flags.data.seq_len)
    check_fewer_than_teacher(info.config, ffn_width=options.ffn_width, block_heads=options.block_heads)
    teacher = load_teacher(info, device)
    data = load_data(flags.data, teacher.tokenizer)
    valid = eval_loader(data.validation, BATCH, options.importance_sentences)
    kept = neurons_to_keep(neuron_importance(teacher.model, valid, device), options.ffn_width, options.per_layer)
    layers = [feed_forward_of_neurons(layer, keep) for layer, keep in zip(teacher.model.layers, kept, strict=True)]
    heads = None
    if options.block_heads is not None:  # both importances on the teacher, as each method alone would rank
        heads = heads_to_keep(head_importance(teacher.model, valid, device), options.block_heads, per_layer=True)
        layers = [
            layer.with_attention(attention_of_heads(layer.attention, keep, layer.attention.dropout))
            for layer, keep in zip(layers, heads, strict=True)
        ]
    base = teacher.model
    model = SimplifiedBert(base.config, base.embeddings, layers, base.mlm_head).eval()
    chosen = {}
    if options.reconstruct:
        sentences = options.calibration_sentences
        calibration, held_out = calibration_loaders(data.train, BATCH, sentences, options.reconstruct)
        pruned = {index: (index, keep) for index, keep in enumerate(kept)}
        chosen = RECONSTRUCTION[options.reconstruct].function(base, model, pruned, calibration, held_out, device)
    output = Storage(flags.storage.storage_directory).neuron_pruned_model(
        options.ffn_width, options.per_layer, options.reconstruct, options.block_heads
    )
    meta = {
        "teacher": teacher.name,
        "method": "neuron_pruning" if heads is None else "head_neuron_pruning",
        "reconstructed": options.reconstruct,
        "kept_neurons": [len(keep) for keep in kept],
        **({} if heads is None else {"kept_heads": heads}),
        **({"reconstruction": chosen} if chosen else {}),
    }
    save_and_export(model, teacher.tokenizer, output, meta, flags.export.export_hf)
    log.info("kept neurons per layer %s; saved to %s", meta["kept_neurons"], output)
    return {"output": str(output), **meta}


if __name__ == "__main__":
    main()
