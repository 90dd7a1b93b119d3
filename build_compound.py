"""Build a compound model — several cuts in one model — from a short declarative recipe (see utils/compound.py):
retrained or pruned attentions, retrained or pruned feed-forwards, merged pairs or dropped layers, per layer.
Saves it as a simplified model that healing (train_full_merged_model.py --model), every evaluation,
make_report.py, bench/model_cost.py and export_hf.py take.

Example: python build_compound.py --teacher storage/teacher --name half_attention_ffn768 \
    --recipe '{"attention": {"heads": 6, "d_k": 32}, "prune_neurons": {"width": 768, "reconstruct": true}}'
"""

import json
from dataclasses import dataclass
from pathlib import Path

from utils.args import CUT_FLAGS, TeacherArguments, flag, require
from utils.compound import NEEDS_DATA, build_compound, read_recipe, recipe_reconstruction
from utils.data import eval_loader, load_data
from utils.errors import UserError
from utils.experiment import cli_entry, log, parse_and_start
from utils.model_io import files_fingerprint, is_simplified, save_and_export
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


def built_from(info, sources: dict, flags) -> dict:
    """What a compound model is built from besides its recipe: the teacher's weights, each trained student's
    checkpoint (``sources``: part -> layer -> path, as the model's meta keeps them) and the flags that choose its
    pruning. A model saved from other weights of the same sources is stale (its students trained on); one saved
    with other flags is another model."""
    paths = sorted(path for part in sources.values() for path in part.values())
    pruning = ("importance_sentences", "calibration_sentences")
    return {
        "teacher_fingerprint": info.fingerprint,
        "sources": {path: files_fingerprint([Path(path)]) for path in paths},
        "flags": {**{name: getattr(flags.compound, name) for name in pruning},
                  **{name: getattr(flags.data, name) for name in ("seed", "seq_len", "max_sentences")}},
    }  # fmt: skip


GROUPS = [TeacherArguments, CompoundArguments, *CUT_FLAGS]


@cli_entry
def main(argv: list[str] | None = None) -> dict:
    flags, device = parse_and_start(GROUPS, __doc__, argv)
    options = flags.compound
    recipe = read_recipe(options.recipe)  # before anything is loaded
    output = Storage(flags.storage.storage_directory).model(options.name)
    info = inspect_teacher(flags.teacher.teacher, flags.data.seq_len)
    if is_simplified(output):
        saved = json.loads((output / "sitra.json").read_text()).get("meta", {})
        if saved.get("recipe") != recipe:
            raise UserError(f"--name {options.name}: {output} holds another model; choose another name")
        now = built_from(info, saved.get("sources", {}), flags)
        if saved.get("built_from", now) == now:  # a model saved before sitra recorded it is taken as it is
            log.info("%s already holds this recipe's model: nothing to do", output)
            return {"output": str(output), "recipe": recipe}
        if saved["built_from"]["flags"] != now["flags"]:
            raise UserError(f"--name {options.name}: {output} was built with {saved['built_from']['flags']}, not "
                            f"{now['flags']}; choose another name")  # fmt: skip
        log.info("%s was built from other weights of its teacher or students (trained on since): building it "
                 "again", output)  # fmt: skip
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
    meta["built_from"] = built_from(info, meta["sources"], flags)
    save_and_export(model, teacher.tokenizer, output, meta, flags.export.export_hf)
    widths = [layer.ffn_in.out_features for layer in model.layers]
    heads = [layer.attention.heads for layer in model.layers]
    log.info("saved %s: %d layers, heads %s, feed-forward widths %s", output, len(model.layers), heads, widths)
    return {"output": str(output), "layers": len(model.layers), "heads": heads, "widths": widths, **meta}


if __name__ == "__main__":
    main()
