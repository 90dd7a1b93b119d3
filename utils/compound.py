"""Compound models: several cuts in one model, from a short declarative recipe (JSON: a file or inline).

A recipe names, per part, where each layer's module comes from; a part left out keeps the teacher's::

    {
      "attention":     {"heads": 6, "d_k": 32, "flags": {"student_init": "heads"}, "source": "block",
                        "layers": [0, 1, 2]},
      "prune_heads":   {"heads": 6, "layers": [3, 4, 5]},
      "feed_forward":  {"width": 768, "flags": {"ffn_init": "neurons"}},
      "prune_neurons": {"width": 768, "reconstruct": true},
      "merge":         {"heads": 12, "d_k": 32, "source": "conditioned", "flags": {"merge_init": "first"},
                        "pairs": [0, 2]},
      "drop":          {"rule": "top", "count": 2}
    }

``attention`` / ``feed_forward`` / ``merge`` take the students trained by retrain_single_block.py (``--part
ffn``), retrain_merge.py or the conditioned chain, found by the values of the flags they were trained with
(``flags``: flag name -> value, e.g. ``{"criterion": "CrossEntropy", "loss_on_logits": true}``; the defaults may
be left out); ``prune_heads`` / ``prune_neurons`` prune the teacher's own modules by importance (neurons
optionally refitted: ``reconstruct`` true for least squares, or a method of utils.pruning.RECONSTRUCTION by name,
e.g. ``"validated"``); ``layers`` (default: every layer) and ``pairs`` (the first layers
of the merged pairs; default: 0, 2, ...) say where. A layer takes at
most one attention and one feed-forward source; merged pairs and dropped layers replace whole layers.
"""

from __future__ import annotations

import json
from pathlib import Path

from models import DROP, SimplifiedBert, assemble, layers_to_drop, pruned_modules
from utils.assembly import collect_attentions, collect_feed_forwards, collect_merged_layers
from utils.errors import UserError
from utils.pruning import (
    RECONSTRUCTION,
    head_importance,
    heads_to_keep,
    neuron_importance,
    neurons_to_keep,
    reconstruction_of,
)
from utils.runs import variant_of_flags

PARTS = {  # recipe key -> the keys it takes (required ones first, then optional)
    "attention": (("heads", "d_k"), ("flags", "source", "layers")),
    "prune_heads": (("heads",), ("layers",)),
    "feed_forward": (("width",), ("flags", "layers")),
    "prune_neurons": (("width",), ("reconstruct", "layers")),
    "merge": (("heads", "d_k"), ("flags", "source", "pairs")),
    "drop": (("rule", "count"), ()),
}
NEEDS_DATA = ("prune_heads", "prune_neurons")  # importance (and calibration) sentences


def read_recipe(text: str) -> dict:
    """The recipe in ``text`` (a JSON file's path, or JSON), checked: one-line errors name the recipe key."""
    source = Path(text)
    try:
        recipe = json.loads(source.read_text() if source.is_file() else text)
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"--recipe: neither a JSON file nor JSON ({type(error).__name__}: {error})") from None
    if not isinstance(recipe, dict) or not recipe:
        raise UserError("--recipe: expected a JSON object with at least one of " + ", ".join(PARTS))
    for part, options in recipe.items():
        if part not in PARTS:
            raise UserError(f"--recipe: unknown part {part!r} (expected one of {', '.join(PARTS)})")
        required, optional = PARTS[part]
        if not isinstance(options, dict):
            raise UserError(f"--recipe {part}: expected an object of {', '.join(required + optional)}")
        missing, unknown = set(required) - set(options), set(options) - set(required) - set(optional)
        if missing or unknown:
            raise UserError(
                f"--recipe {part}: needs {', '.join(required)}; may take {', '.join(optional) or 'nothing else'}"
            )
    for first, second in (("attention", "prune_heads"), ("feed_forward", "prune_neurons"), ("merge", "drop")):
        if first in recipe and second in recipe and _overlap(recipe[first], recipe[second]):
            raise UserError(f"--recipe: {first} and {second} both replace the same layers")
    recipe_reconstruction(recipe)  # a reconstruction it knows, before anything is loaded
    if "drop" in recipe and recipe["drop"]["rule"] not in DROP.names():
        raise UserError(f"--recipe drop: rule {recipe['drop']['rule']!r} is not one of {', '.join(DROP.names())}")
    return recipe


def recipe_reconstruction(recipe: dict) -> str | None:
    """The reconstruction of the recipe's pruned neurons (:data:`utils.pruning.RECONSTRUCTION`), if any."""
    return reconstruction_of(recipe.get("prune_neurons", {}).get("reconstruct"), "--recipe prune_neurons")


def recipe_variant(options: dict, kind: str) -> str:
    """The folder suffix of the ``kind`` runs a recipe part takes: from its ``flags`` (``""``: the defaults)."""
    flags = options.get("flags", {})
    if not isinstance(flags, dict):
        raise UserError(f"--recipe: flags of {kind} runs: expected an object of flag name -> value, got {flags!r}")
    return variant_of_flags(kind, flags)


def _overlap(first: dict, second: dict) -> bool:
    layers_a, layers_b = first.get("layers"), second.get("layers")
    return layers_a is None or layers_b is None or bool(set(layers_a) & set(layers_b))


def build_compound(
    recipe: dict, storage_directory, teacher, validation=None, calibration=None, device=None, held_out=None
) -> tuple[SimplifiedBert, dict]:
    """The compound model of ``recipe`` and its meta. ``validation`` / ``calibration`` / ``held_out`` loaders
    serve the pruning parts (importance; least-squares reconstruction, fitted on ``calibration``, a validated
    one choosing its ridge on ``held_out``)."""
    model, name, count = teacher.model, teacher.name, teacher.num_layers
    every = list(range(count))
    attentions, feed_forwards, merged, dropped, sources = {}, {}, {}, set(), {}
    if "attention" in recipe:
        options = recipe["attention"]
        kind = options.get("source", "block")
        variant = recipe_variant(options, kind)
        collected = collect_attentions(
            storage_directory, model, name, options["heads"], options["d_k"], options.get("layers"), kind, variant
        )
        _take_students("attention", collected, attentions, sources)
    if "prune_heads" in recipe:
        options = recipe["prune_heads"]
        layers = options.get("layers", every)
        kept = heads_to_keep(head_importance(model, validation, device, layers), options["heads"], per_layer=True)
        attentions.update(pruned_modules(model, heads=dict(zip(layers, kept, strict=True)))[0])
    if "feed_forward" in recipe:
        options = recipe["feed_forward"]
        variant = recipe_variant(options, "ffn")
        collected = collect_feed_forwards(
            storage_directory, model, name, options["width"], options.get("layers"), variant
        )
        _take_students("feed_forward", collected, feed_forwards, sources)
    if "prune_neurons" in recipe:
        options = recipe["prune_neurons"]
        layers = options.get("layers", every)
        kept = neurons_to_keep(neuron_importance(model, validation, device, layers), options["width"], per_layer=True)
        pruned_neurons = dict(zip(layers, kept, strict=True))
        feed_forwards.update(pruned_modules(model, neurons=pruned_neurons)[1])
    if "merge" in recipe:
        options = recipe["merge"]
        kind = options.get("source", "merge")
        variant = recipe_variant(options, kind)
        found, paths, missing = collect_merged_layers(
            storage_directory, model, name, options["heads"], options["d_k"], kind, variant=variant
        )
        pairs = options.get("pairs", list(range(0, count - 1, 2)))
        _require_all("merge", [b for b in missing if b in pairs], pairs=True)
        merged.update({b: layer for b, layer in found.items() if b in pairs})
        sources["merge"] = {b: str(p) for b, p in paths.items() if b in pairs}
    if "drop" in recipe:
        options = recipe["drop"]
        if DROP[options["rule"]].needs:
            raise UserError(f"--recipe drop: rule {options['rule']} ranks by similarities; use drop_layers.py for it")
        dropped = set(layers_to_drop(options["rule"], count, options["count"]))
    replaced = set(merged) | {b + 1 for b in merged} | dropped
    clashes = sorted(replaced & (set(attentions) | set(feed_forwards)))
    if clashes:
        raise UserError(f"--recipe: layers {clashes} are merged or dropped and also given a new module")
    compound = assemble(model, attentions=attentions, merged=merged, dropped=dropped, feed_forwards=feed_forwards)
    meta = {"method": "compound", "recipe": recipe, "teacher": name, "sources": sources, "dropped": sorted(dropped)}
    compound.eval()
    reconstruction = recipe_reconstruction(recipe)
    if reconstruction is not None:  # on the assembled model: a method may fit on the pruned model's own inputs
        pruned = {
            index: (layer.origin["teacher_layers"][0], pruned_neurons[layer.origin["teacher_layers"][0]])
            for index, layer in enumerate(compound.layers)
            if layer.origin["kind"] != "merged" and layer.origin["teacher_layers"][0] in pruned_neurons
        }
        chosen = RECONSTRUCTION[reconstruction].function(model, compound, pruned, calibration, held_out, device)
        meta["reconstruction"] = {"method": reconstruction, **({"chosen": chosen} if chosen else {})}
    return compound, meta


def _take_students(part: str, collected: tuple[dict, dict, list], modules: dict, sources: dict) -> None:
    """A recipe part's trained students (found, their checkpoints, the layers without a run) into ``modules``
    by layer, their checkpoints into ``sources``: every layer the part names must have its run."""
    found, paths, missing = collected
    _require_all(part, missing)
    modules.update(found)
    sources[part] = {b: str(p) for b, p in paths.items()}


def _require_all(part: str, missing: list[int], pairs: bool = False) -> None:
    if missing:
        what = ", ".join(f"{b}-{b + 1}" for b in missing) if pairs else ", ".join(map(str, missing))
        raise UserError(
            f"--recipe {part}: no trained run for {'pairs' if pairs else 'layers'} {what}; train them first"
        )
