"""Build a compound model — several cuts in one model — from a short declarative recipe (see utils/compound.py):
retrained or pruned attentions, retrained or pruned feed-forwards, merged pairs or dropped layers, per layer.
Saves it as a simplified model that healing (train_full_merged_model.py --model), every evaluation,
make_report.py, bench/model_cost.py and export_hf.py take.

Example: python build_compound.py --teacher storage/teacher --name half_attention_ffn768 \
    --recipe '{"attention": {"heads": 6, "d_k": 32}, "prune_neurons": {"width": 768, "reconstruct": true}}'
"""

import json
from dataclasses import dataclass

from utils.args import CUT_FLAGS, TeacherArguments, flag, require
from utils.compound import NEEDS_DATA, build_compound, read_recipe, recipe_reconstruction
from utils.data import eval_loader, load_data
from utils.errors import UserError
from utils.experiment import cli_entry, log, parse_and_start
from utils.model_io import is_simplified, save_and_export
from utils.pruning import calibration_loaders
from utils.storage import Storage
from utils.teacher import inspect_teacher, load_teacher

BATCH = 64


@dataclass
class CompoundArguments:
    attribute = "compound"

    recipe: str = flag(None, "The recipe: a JSON file or inline JSON (see utils/compound.py).", required=True)
    name: str = flag(None, "Name of the saved model (under the storage directory's models).", required=True)
    importance_sentences: int = flag(2000, "Validation sentences that rank heads and neurons (pruning parts).")
    calibration_sentences: int = flag(
        512,
        "Training sentences a reconstruction is fitted on (a validated one scores its choices on the next as many).",
    )

    def __post_init__(self):
        require("/" not in self.name and self.name.strip(), f"--name {self.name!r}: expected a plain folder name")
        for name in ("importance_sentences", "calibration_sentences"):
            require(getattr(self, name) > 0, f"--{name} must be positive, got {getattr(self, name)}")


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    flags, device = parse_and_start([TeacherArguments, CompoundArguments, *CUT_FLAGS], __doc__, argv)
    options = flags.compound
    recipe = read_recipe(options.recipe)  # before anything is loaded
    output = Storage(flags.storage.storage_directory).model(options.name)
    if is_simplified(output):
        saved = json.loads((output / "sitra.json").read_text()).get("meta", {}).get("recipe")
        if saved != recipe:
            raise UserError(f"--name {options.name}: {output} holds another model; choose another name")
        log.info("%s already holds this recipe's model: nothing to do", output)
        return {"output": str(output), "recipe": recipe}
    info = inspect_teacher(flags.teacher.teacher, flags.data.seq_len)
    teacher = load_teacher(info, device)
    validation = calibration = held_out = None
    if any(part in recipe for part in NEEDS_DATA):
        data = load_data(flags.data, teacher.tokenizer)
        validation = eval_loader(data.validation, BATCH, options.importance_sentences)
        reconstruction = recipe_reconstruction(recipe)
        if reconstruction is not None:
            sentences = options.calibration_sentences
            calibration, held_out = calibration_loaders(data.train, BATCH, sentences, reconstruction)
    model, meta = build_compound(
        recipe, flags.storage.storage_directory, teacher, validation, calibration, device, held_out
    )
    save_and_export(model, teacher.tokenizer, output, meta, flags.export.export_hf)
    widths = [layer.ffn_in.out_features for layer in model.layers]
    heads = [layer.attention.heads for layer in model.layers]
    log.info("saved %s: %d layers, heads %s, feed-forward widths %s", output, len(model.layers), heads, widths)
    return {"output": str(output), "layers": len(model.layers), "heads": heads, "widths": widths, **meta}


if __name__ == "__main__":
    main()
