"""Compound models (build_compound.py): a recipe combining cuts gives one saved model with exactly those modules,
refuses contradictions in one line before loading anything, and heals, evaluates and exports like any other."""

import json

import pytest
import torch
from transformers import AutoModelForMaskedLM

import build_compound
import eval_retrained_12
import retrain_merge
import retrain_single_block
import train_full_merged_model
from bench import assemble as assemble_notebook
from conftest import one_line_error, storage_of
from models import IGNORE_INDEX, assemble
from utils.assembly import collect_attentions, collect_feed_forwards, collect_merged_layers
from utils.compound import read_recipe
from utils.errors import UserError
from utils.model_io import load_simplified
from utils.teacher import load_teacher


def test_a_recipe_of_retrained_attention_pruned_neurons_and_a_merged_pair(
    run_flags, tiny_teacher_5_layers, tmp_path, capsys
):
    flags = run_flags(teacher=tiny_teacher_5_layers) + ["--epochs", "1"]
    retrain_single_block.main(flags + ["--block", "0", "1", "--block_heads", "2", "--block_d_k", "8"])
    retrain_merge.main(flags + ["--block", "2", "--block_heads", "4", "--block_d_k", "8", "--merge_init", "first"])
    recipe = {
        "attention": {"heads": 2, "d_k": 8, "layers": [0, 1]},
        "prune_neurons": {"width": 16, "reconstruct": True, "layers": [0, 1, 4]},
        "merge": {"heads": 4, "d_k": 8, "flags": {"merge_init": "first"}, "pairs": [2]},
    }
    build = run_flags(teacher=tiny_teacher_5_layers, drop=("batch_size", "eval_sentences"))
    build += ["--name", "compound_a", "--recipe", json.dumps(recipe), "--importance_sentences", "32"]
    result = build_compound.main(build + ["--calibration_sentences", "32", "--export_hf", str(tmp_path / "hf")])
    build += ["--calibration_sentences", "32"]
    assert result["layers"] == 4 and result["heads"] == [2, 2, 4, 4] and result["widths"] == [16, 16, 64, 16]
    storage = storage_of(flags)
    model, _, meta = load_simplified(storage.model("compound_a"))
    assert meta["method"] == "compound" and meta["recipe"] == recipe
    assert [layer.origin["teacher_layers"] for layer in model.layers] == [[0], [1], [2, 3], [4]]
    trained = torch.load(storage.block_output("block", 1, 2, 8), weights_only=True)["model"]
    assert torch.equal(model.layers[1].attention.query.weight, trained["query.weight"])
    merged = torch.load(storage.block_output("merge", 2, 4, 8, "-init_first"), weights_only=True)["model"]
    assert torch.equal(model.layers[2].ffn_in.weight, merged["ffn_in.weight"])
    assert build_compound.main(build)["output"] == str(storage.model("compound_a"))  # the same recipe: nothing to do
    # other pruning flags under the same name are another model: refused, the saved one kept
    error = one_line_error(capsys, build_compound.main, build + ["--calibration_sentences", "16"])
    assert "was built with" in error and "choose another name" in error
    # block 1's student trains on (a study's student_epochs raised): the model is built again from it
    retrain_single_block.main(flags + ["--block", "1", "--block_heads", "2", "--block_d_k", "8", "--epochs", "2"])
    trained_on = torch.load(storage.block_output("block", 1, 2, 8), weights_only=True)["model"]
    assert not torch.equal(trained_on["query.weight"], trained["query.weight"])
    assert "layers" in build_compound.main(build)  # built, not "nothing to do"
    model, _, meta = load_simplified(storage.model("compound_a"))
    assert torch.equal(model.layers[1].attention.query.weight, trained_on["query.weight"])
    assert meta["built_from"]["flags"]["calibration_sentences"] == 32
    history = train_full_merged_model.main(flags + ["--model", str(storage.model("compound_a"))])
    assert [r["epoch"] for r in history] == [0, 1]
    healed = storage.model("compound_a_finetuned")
    eval_flags = run_flags(teacher=tiny_teacher_5_layers, drop=("batch_size", "eval_sentences"))
    report = eval_retrained_12.main(eval_flags + ["--reference", "none", "--latency_repeats", "0", "--models",
                                                  str(storage.model("compound_a")), str(healed)])  # fmt: skip
    row = report["models"]["compound_a"]
    assert (
        row["method"] == "compound"
        and row["flop_ratio"] < 0.7
        and report["models"]["compound_a_finetuned"]["healing_steps"] > 0
    )


def test_recipes_that_contradict_themselves_are_refused_before_loading(run_flags, capsys):
    with pytest.raises(UserError, match="attention and prune_heads both replace the same layers"):
        read_recipe('{"attention": {"heads": 2, "d_k": 8}, "prune_heads": {"heads": 2, "layers": [0]}}')
    with pytest.raises(UserError, match="unknown part 'ffn'"):
        read_recipe('{"ffn": {"width": 3}}')
    with pytest.raises(UserError, match="prune_neurons: needs width"):
        read_recipe('{"prune_neurons": {"reconstruct": true}}')
    build = run_flags(drop=("batch_size", "eval_sentences")) + [
        "--name",
        "x",
        "--recipe",
        '{"drop": {"rule": "nope", "count": 1}}',
    ]
    assert "--recipe drop: rule 'nope' is not one of" in one_line_error(capsys, build_compound.main, build)
    build = run_flags(drop=("batch_size", "eval_sentences")) + [
        "--name",
        "x",
        "--recipe",
        '{"attention": {"heads": 2, "d_k": 8}}',
    ]
    assert "--recipe attention: no trained run for layers 0, 1, 2" in one_line_error(capsys, build_compound.main, build)


def test_a_compound_gives_the_logits_of_its_parts_by_hand_and_after_export(run_flags, tiny_teacher_5_layers, tmp_path):
    """Retrained attention in layer 0, a student feed-forward in layer 4, a merged pair 2-3: the saved compound, the
    same parts assembled by hand, and its export loaded through AutoModelForMaskedLM give the same logits."""
    flags = run_flags(teacher=tiny_teacher_5_layers) + ["--epochs", "1"]
    retrain_single_block.main(flags + ["--block", "0", "--block_heads", "2", "--block_d_k", "8"])
    retrain_single_block.main(flags + ["--block", "4", "--part", "ffn", "--ffn_width", "24"])
    retrain_merge.main(flags + ["--block", "2", "--block_heads", "4", "--block_d_k", "8"])
    recipe = {
        "attention": {"heads": 2, "d_k": 8, "layers": [0]},
        "feed_forward": {"width": 24, "layers": [4]},
        "merge": {"heads": 4, "d_k": 8, "pairs": [2]},
    }
    build = run_flags(teacher=tiny_teacher_5_layers, drop=("batch_size", "eval_sentences"))
    build_compound.main(
        build + ["--name", "parts", "--recipe", json.dumps(recipe), "--export_hf", str(tmp_path / "hf")]
    )
    storage, teacher = storage_of(flags), load_teacher(tiny_teacher_5_layers)
    saved, _, _ = load_simplified(storage.model("parts"))
    attentions, _, _ = collect_attentions(storage.root, teacher.model, teacher.name, 2, 8, [0])
    feed_forwards, _, _ = collect_feed_forwards(storage.root, teacher.model, teacher.name, 24, [4])
    merged, _, _ = collect_merged_layers(storage.root, teacher.model, teacher.name, 4, 8)
    by_hand = assemble(teacher.model, attentions=attentions, feed_forwards=feed_forwards, merged={2: merged[2]}).eval()
    ids = torch.tensor([[101, 2023, 2003, 103, 2204, 1012, 102]])
    mask, labels = torch.ones_like(ids), torch.full_like(ids, IGNORE_INDEX)
    labels[0, 3] = 2023
    expected = by_hand(ids, mask, labels)
    assert torch.allclose(saved(ids, mask, labels), expected, atol=1e-5)
    exported = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    assert torch.allclose(exported(input_ids=ids, attention_mask=mask).logits[0, 3], expected[0], atol=1e-5)


def test_a_validated_reconstruction_refits_the_layers_a_drop_keeps_and_says_what_it_chose(run_flags, capsys):
    recipe = {
        "prune_heads": {"heads": 2, "layers": [0, 2]},
        "prune_neurons": {"width": 16, "reconstruct": "validated", "layers": [0, 2]},
        "drop": {"rule": "alternate", "count": 1},  # teacher layer 1 goes: layer 2 is the compound's layer 1
    }
    build = run_flags(drop=("batch_size", "eval_sentences")) + ["--importance_sentences", "32"]
    too_many = one_line_error(capsys, build_compound.main, build + ["--name", "v", "--recipe", json.dumps(recipe)])
    assert "--calibration_sentences 512: --reconstruct validated fits on that many training sentences" in too_many
    build += ["--calibration_sentences", "32"]  # of the tiny data's 96: 32 to fit, 32 to check
    result = build_compound.main(build + ["--name", "validated", "--recipe", json.dumps(recipe)])
    assert result["widths"] == [16, 16] and result["heads"] == [2, 2]
    model, _, meta = load_simplified(storage_of(build).model("validated"))
    chosen = meta["reconstruction"]["chosen"]
    assert meta["reconstruction"]["method"] == "validated" and set(chosen) == {"0", "1"}
    for layer in chosen.values():  # each layer holds its best choice on held-out sentences, never worse than plain
        errors = layer["held_out_errors"]
        assert errors[str(layer["strength"])] == min(errors.values()) <= errors["plain"] < 1
    recipe["prune_neurons"]["reconstruct"] = "ridge"
    error = one_line_error(capsys, build_compound.main, build + ["--name", "x", "--recipe", json.dumps(recipe)])
    assert "--recipe prune_neurons: reconstruct 'ridge': expected true, false or one of" in error


def test_the_notebook_builds_a_compound_from_a_recipe(run_flags, tiny_teacher_dir, tiny_data_dir):
    storage = storage_of(run_flags())
    recipe = (
        '{"prune_neurons": {"width": 16, "reconstruct": true, "layers": [0, 1]}, "drop": {"rule": "top", "count": 1}}'
    )
    assemble_notebook.main(
        ["--storage_directory", str(storage.root), "--teacher", tiny_teacher_dir, "--block_heads", "2",
         "--block_d_k", "8", "--data_dir", tiny_data_dir, "--eval_sentences", "16", "--recipe", recipe,
         "--compound_name", "from_notebook"]
    )  # fmt: skip
    model, _, meta = load_simplified(storage.model("from_notebook"))
    assert [layer.ffn_in.out_features for layer in model.layers] == [16, 16] and meta["dropped"] == [2]
