"""Feed-forward neuron pruning (prune_neurons.py): exact at full width, importance finds a dead neuron, the
least-squares reconstruction fits the full layer better than plain pruning, the validated one never does worse
than plain pruning on held-out tokens, and the saved model evaluates and exports as plain BertForMaskedLM with a
smaller intermediate_size."""

import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, BertForMaskedLM

import eval_retrained_12
import prune_neurons
from conftest import storage_of, tiny_config
from models import (
    IGNORE_INDEX,
    FeedForward,
    SimplifiedBert,
    feed_forward_of_neurons,
    normalized_output_error,
    output_projection,
    reconstruct_feed_forward_output,
    ridge_toward,
    select_trainable,
    validated_ridge,
)
from utils.data import eval_loader, load_masked_splits
from utils.errors import UserError
from utils.model_io import load_simplified
from utils.pruning import (
    RECONSTRUCTION,
    feed_forward_inputs,
    feed_forward_sums,
    neuron_importance,
    neurons_to_keep,
    reconstruction_of,
)


def tiny_model() -> SimplifiedBert:
    torch.manual_seed(0)
    return SimplifiedBert.from_teacher(BertForMaskedLM(tiny_config()).eval()).eval()  # 64 neurons per layer


def test_keeping_every_neuron_is_the_layer_and_a_subset_is_the_sum_of_its_neurons():
    layer = tiny_model().layers[1]
    states, mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool)
    assert torch.allclose(feed_forward_of_neurons(layer, list(range(64)))(states, mask), layer(states, mask), atol=1e-6)
    pruned = feed_forward_of_neurons(layer, [3, 7, 60])
    assert pruned.ffn_in.out_features == 3 and pruned.attention is layer.attention
    activations = layer.activation(layer.ffn_in(states))[..., [3, 7, 60]]
    expected = activations @ layer.ffn_out.weight[:, [3, 7, 60]].T + layer.ffn_out.bias
    assert torch.allclose(pruned.ffn_out(pruned.activation(pruned.ffn_in(states))), expected, atol=1e-6)


def test_pruned_modules_keeping_every_unit_are_the_model_and_fewer_shrink_only_their_layers():
    from models import assemble, pruned_modules

    model = tiny_model()
    ids, mask = torch.randint(1000, 2000, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    every = pruned_modules(model, {i: list(range(4)) for i in range(3)}, {i: list(range(64)) for i in range(3)})
    whole = assemble(model, attentions=every[0], feed_forwards=every[1]).eval()
    assert torch.allclose(whole.encode(ids, mask), model.encode(ids, mask), atol=1e-5)
    attentions, feed_forwards = pruned_modules(model, heads={0: [1, 3]}, neurons={2: [5, 6, 7]})
    assert set(attentions) == {0} and attentions[0].heads == 2 and set(feed_forwards) == {2}
    pruned = assemble(model, attentions=attentions, feed_forwards=feed_forwards)
    assert pruned.layers[2].ffn_in.out_features == 3 and pruned.layers[1] is model.layers[1]


def test_importance_ranks_a_silenced_neuron_last_and_the_choice_keeps_the_budget(tokenizer, tiny_data_dir):
    model = tiny_model()
    with torch.no_grad():
        model.layers[0].ffn_out.weight[:, 5] = 0  # neuron 5 of layer 0 contributes nothing
    splits = load_masked_splits(tiny_data_dir, tokenizer, 40, 32, seed=0)
    importance = neuron_importance(model, eval_loader(splits.validation, 16), torch.device("cpu"))
    assert len(importance) == 3 and importance[0].shape == (64,)
    assert int(importance[0].argmin()) == 5 and float(importance[0][5]) == 0.0
    per_layer = neurons_to_keep(importance, 16, per_layer=True)
    assert [len(keep) for keep in per_layer] == [16, 16, 16] and 5 not in per_layer[0]
    chosen = neurons_to_keep(importance, 16, per_layer=False)
    assert sum(map(len, chosen)) == 48 and all(chosen) and all(keep == sorted(keep) for keep in chosen)
    with pytest.raises(ValueError):
        neurons_to_keep(importance, 65, per_layer=True)


def test_reconstruction_fits_the_full_feed_forward_better_than_pruning(tokenizer, tiny_data_dir):
    model = tiny_model()
    splits = load_masked_splits(tiny_data_dir, tokenizer, 40, 64, seed=0)
    keep = [list(range(0, 64, 4))] * 3  # a quarter of the neurons
    sources = {index: (layer, kept) for index, (layer, kept) in enumerate(zip(model.layers, keep, strict=True))}
    statistics = feed_forward_sums(model, sources, eval_loader(splits.train, 16), torch.device("cpu"))
    held_out = next(iter(eval_loader(splits.validation, 32)))
    states = model.embeddings(input_ids=held_out["input_ids"])
    real = held_out["attention_mask"].bool()
    layer = model.layers[0]
    hidden = layer.attention_norm(states + layer.attention(states, real)[0])
    full = layer.ffn_out(layer.activation(layer.ffn_in(hidden)))[real]
    pruned = feed_forward_of_neurons(layer, keep[0])
    error_pruned = (pruned.ffn_out(pruned.activation(pruned.ffn_in(hidden)))[real] - full).pow(2).mean()
    reconstruct_feed_forward_output(pruned, *statistics[0][:2])
    error_fitted = (pruned.ffn_out(pruned.activation(pruned.ffn_in(hidden)))[real] - full).pow(2).mean()
    assert error_fitted < 0.5 * error_pruned  # on sentences the fit never saw


def test_the_script_saves_a_model_that_evaluates_and_exports_as_plain_bert(run_flags, tmp_path):
    flags = run_flags(drop=("batch_size", "eval_sentences"))
    flags += ["--ffn_width", "16", "--per_layer", "--reconstruct", "--importance_sentences", "32"]
    flags += ["--calibration_sentences", "64", "--export_hf", str(tmp_path / "exported")]
    result = prune_neurons.main(flags)
    storage = storage_of(flags)
    folder = storage.neuron_pruned_model(16, per_layer=True, reconstruction="least_squares")
    assert result["output"] == str(folder) and result["kept_neurons"] == [16, 16, 16]
    model, _, meta = load_simplified(folder)
    assert meta["method"] == "neuron_pruning" and [layer.ffn_in.out_features for layer in model.layers] == [16] * 3
    exported = AutoModelForMaskedLM.from_pretrained(tmp_path / "exported").eval()
    assert type(exported) is BertForMaskedLM and exported.config.intermediate_size == 16
    ids = torch.tensor([[101, 2023, 2003, 103, 1012, 102]])
    mask, labels = torch.ones_like(ids), torch.full_like(ids, IGNORE_INDEX)
    labels[0, 3] = 2023
    expected = model(ids, mask, labels)[0]  # the logits at the masked position
    assert torch.allclose(exported(input_ids=ids, attention_mask=mask).logits[0, 3], expected, atol=1e-4)
    eval_flags = run_flags(drop=("batch_size", "eval_sentences")) + ["--reference", "none", "--latency_repeats", "0"]
    report = eval_retrained_12.main(eval_flags + ["--model", str(folder)])
    row = report["models"][folder.name]
    assert row["method"] == "neuron_pruning" and row["flop_ratio"] < 1
    written = json.loads((storage.results(folder.name) / "metrics.json").read_text())
    assert written["models"][folder.name]["method"] == "neuron_pruning"
    select_trainable(model)  # healing trains the pruned feed-forwards, nothing else
    trainable = {name.split(".", 2)[2] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"ffn_in.weight", "ffn_in.bias", "ffn_out.weight", "ffn_out.bias"}


def test_the_script_saves_a_validated_reconstruction_under_its_own_name(run_flags):
    flags = run_flags(drop=("batch_size", "eval_sentences")) + ["--ffn_width", "16", "--per_layer"]
    flags += ["--reconstruct", "validated", "--importance_sentences", "32", "--calibration_sentences", "32"]
    result = prune_neurons.main(flags)
    folder = storage_of(flags).neuron_pruned_model(16, per_layer=True, reconstruction="validated")
    assert folder.name == "pruned_ffn_16_ls_validated" and result["output"] == str(folder)
    _, _, meta = load_simplified(folder)
    assert meta["reconstructed"] == "validated" and sorted(meta["reconstruction"]) == ["0", "1", "2"]


def test_heads_and_neurons_pruned_together(run_flags):
    flags = run_flags(drop=("batch_size", "eval_sentences")) + ["--ffn_width", "32", "--block_heads", "2"]
    result = prune_neurons.main(flags + ["--importance_sentences", "32"])
    model, _, meta = load_simplified(storage_of(flags).neuron_pruned_model(32, False, None, heads=2))
    assert result["method"] == meta["method"] == "head_neuron_pruning" and sum(meta["kept_neurons"]) == 3 * 32
    assert [layer.attention.heads for layer in model.layers] == [2, 2, 2] and len(meta["kept_heads"][0]) == 2
    assert all(layer.origin["kind"] == "student_attention" for layer in model.layers)


def test_neurons_init_keeps_exactly_the_most_important_neurons():
    layer = tiny_model().layers[0]
    importance = torch.zeros(64)
    importance[[40, 2, 17]] = torch.tensor([3.0, 2.0, 1.0])  # known importances: 40 > 2 > 17 > the rest
    keep = neurons_to_keep([importance], 3, per_layer=True)[0]
    assert keep == [2, 17, 40]
    student = FeedForward.of_layer(feed_forward_of_neurons(layer, keep))
    assert torch.equal(student.ffn_in.weight, layer.ffn_in.weight[[2, 17, 40]])
    assert torch.equal(student.ffn_out.weight, layer.ffn_out.weight[:, [2, 17, 40]])


def test_reconstruction_recovers_a_dropped_neuron_that_copies_a_kept_one():
    layer = tiny_model().layers[0]
    with torch.no_grad():  # neuron 5 is neuron 3 again: dropping 5 loses nothing least squares cannot restore
        layer.ffn_in.weight[5], layer.ffn_in.bias[5] = layer.ffn_in.weight[3], layer.ffn_in.bias[3]
    keep = [index for index in range(64) if index != 5]
    states = torch.randn(500, 32)
    full = FeedForward.of_layer(layer)(states)
    pruned = feed_forward_of_neurons(layer, keep)
    kept = pruned.activation(pruned.ffn_in(states)).double()
    augmented = torch.cat([kept, torch.ones(len(kept), 1, dtype=torch.float64)], dim=1)
    assert (FeedForward.of_layer(pruned)(states) - full).abs().max() > 1e-3  # plain pruning loses neuron 5
    reconstruct_feed_forward_output(pruned, augmented.T @ augmented, augmented.T @ full.double())
    assert torch.allclose(FeedForward.of_layer(pruned)(states), full, atol=1e-4)


def test_the_sums_of_every_neuron_give_back_the_layer_and_the_ridge_runs_from_least_squares_to_the_prior():
    model = tiny_model()
    layer = model.layers[1]
    every = list(range(64))
    loader = [{"input_ids": torch.randint(1000, 2000, (4, 6)), "attention_mask": torch.ones(4, 6, dtype=torch.long)}]
    gram, cross = feed_forward_sums(model, {1: (layer, every)}, loader, torch.device("cpu"))[1]
    exact = output_projection(layer)  # the full layer's own weights fit its own output exactly:
    assert gram.shape == (65, 65) and cross.shape == (65, 32)
    assert torch.allclose(gram @ exact, cross, rtol=1e-6, atol=1e-6)  # they solve the normal equations
    prior = torch.zeros_like(exact)
    assert torch.allclose(ridge_toward(gram, cross, prior, 1e8), prior, atol=1e-6)  # λ → ∞: the prior
    fitted = ridge_toward(gram, cross, prior, 1e-9)  # λ → 0: a least-squares solution (24 tokens, 65 unknowns)
    assert torch.allclose(gram @ fitted, cross, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the sums are those of the layer's own activations and output at its inputs
        hidden = feed_forward_inputs(model, 1, loader, "cpu")  # [n, 32]
        full = FeedForward.of_layer(layer)(hidden).double()
        kept = layer.activation(layer.ffn_in(hidden)).double()
    augmented = torch.cat([kept, torch.ones(len(kept), 1, dtype=torch.float64)], dim=1)
    assert torch.allclose(gram, augmented.T @ augmented) and torch.allclose(cross, augmented.T @ full)


def _loader(splits, first: int, count: int):
    return eval_loader(splits.train, 16, count, skip=first)


def test_validated_reconstruction_restores_a_copied_neuron_fitted_on_the_pruned_model_s_own_inputs(
    tokenizer, tiny_data_dir
):
    splits = load_masked_splits(tiny_data_dir, tokenizer, 40, 96, seed=0)
    teacher = tiny_model()
    with torch.no_grad():  # layer 1's neuron 5 is neuron 3 again: least squares restores what dropping 5 loses
        teacher.layers[1].ffn_in.weight[5], teacher.layers[1].ffn_in.bias[5] = (
            teacher.layers[1].ffn_in.weight[3],
            teacher.layers[1].ffn_in.bias[3],
        )
    keep = [index for index in range(64) if index != 5]
    halved = feed_forward_of_neurons(teacher.layers[0], list(range(32)))  # layer 0 pruned, not refitted
    layers = [halved, feed_forward_of_neurons(teacher.layers[1], keep), teacher.layers[2]]
    model = SimplifiedBert(teacher.config, teacher.embeddings, layers, teacher.mlm_head).eval()
    held_out = _loader(splits, 64, 32)
    restored = RECONSTRUCTION["validated"].function(
        teacher, model, {1: (1, keep)}, _loader(splits, 0, 64), held_out, "cpu"
    )
    errors, strength = restored[1]["held_out_errors"], restored[1]["strength"]
    assert strength != "plain" and errors[str(strength)] < 1e-3 * errors["plain"]  # neuron 5 is back
    # the errors are the pruned model's: recomputed on its own inputs they agree, on the teacher's they do not
    plain = output_projection(feed_forward_of_neurons(teacher.layers[1], keep))
    full = teacher.layers[1]
    for inputs, agrees in ((model, True), (teacher, False)):
        hidden = feed_forward_inputs(inputs, 1, held_out, "cpu")
        with torch.no_grad():
            target = full.ffn_norm(hidden + full.ffn_out(full.activation(full.ffn_in(hidden))))
        error = normalized_output_error(model.layers[1], plain, hidden, target)
        assert (error == pytest.approx(errors["plain"], rel=1e-5)) is agrees


def test_a_reconstruction_is_true_false_or_a_registered_name():
    assert reconstruction_of(True, "x") == "least_squares" and reconstruction_of(None, "x") is None
    assert [reconstruction_of(name, "x") for name in RECONSTRUCTION.names()] == RECONSTRUCTION.names()
    with pytest.raises(UserError, match="families.f: reconstruct 'ridge': expected true, false or one of"):
        reconstruction_of("ridge", "families.f")


def _sums(kept: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Σ [a;1][a;1]ᵀ, Σ [a;1] yᵀ and Σ ‖y‖² of kept activations ``a`` [n, k] and outputs ``y`` [n, hidden]."""
    augmented = torch.cat([kept, torch.ones(len(kept), 1, dtype=kept.dtype)], dim=1)
    return augmented.T @ augmented, augmented.T @ output, float(output.pow(2).sum())


def _squared_error(solution: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, energy: float) -> float:
    """Σ ‖[a;1]ᵀ W − y‖² from the sums of :func:`_sums`, without the tokens."""
    return float(torch.trace(solution.T @ gram @ solution) - 2 * torch.trace(solution.T @ cross)) + energy


def test_the_held_out_check_keeps_the_pruned_weights_where_calibration_confounds_a_dropped_neuron():
    # y = a + d: a kept neuron a (weight 1) and a dropped one d. On the calibration tokens d = 10 a, so least
    # squares gives a the weight 11; on held-out tokens d is independent of a, where 11 is far worse than 1.
    generator = torch.Generator().manual_seed(0)
    a_fit, a_held, d_held = (torch.randn(400, 1, generator=generator, dtype=torch.float64) for _ in range(3))
    fit, held = _sums(a_fit, a_fit + 10 * a_fit)[:2], _sums(a_held, a_held + d_held)
    prior = torch.tensor([[1.0], [0.0]], dtype=torch.float64)  # the pruned weights: a's own weight, no bias
    assert torch.allclose(ridge_toward(*fit, prior, 1e-9), torch.tensor([[11.0], [0.0]], dtype=torch.float64))

    def held_out_error(solution: torch.Tensor) -> float:
        return _squared_error(solution, *held) / held[2]

    solution, strength, errors = validated_ridge(prior, fit, (1e-6, 1e-2, 1.0, 10.0), held_out_error)
    assert strength == "plain" and torch.equal(solution, prior)
    assert errors["plain"] == pytest.approx(0.5, abs=0.1)  # d's share of y = a + d on held-out tokens
    assert errors["1e-06"] > 20 * errors["plain"]
    # where calibration tells the truth (d = 10 a on held-out tokens too), least squares is chosen
    held = _sums(a_held, 11 * a_held)
    solution, strength, _ = validated_ridge(prior, fit, (1e-6, 1e-2, 1.0, 10.0), held_out_error)
    assert strength == 1e-6 and solution[0, 0] == pytest.approx(11, abs=1e-3)


def test_the_normalised_output_error_is_the_layer_s_own_output_error():
    teacher = tiny_model()
    layer, full = feed_forward_of_neurons(teacher.layers[0], list(range(0, 64, 2))), teacher.layers[0]
    with torch.no_grad():
        hidden = torch.randn(50, 32)
        target = full.ffn_norm(hidden + full.ffn_out(full.activation(full.ffn_in(hidden))))
        pruned = layer.ffn_norm(hidden + layer.ffn_out(layer.activation(layer.ffn_in(hidden))))
    assert normalized_output_error(full, output_projection(full), hidden, target) < 1e-10  # the full layer: 0
    expected = float((pruned - target).pow(2).sum() / target.pow(2).sum())  # the pruned layer, run as it is
    assert normalized_output_error(layer, output_projection(layer), hidden, target) == pytest.approx(expected, rel=1e-5)


def test_the_reconstruction_benchmark_refits_the_same_pruned_model_each_way(tiny_teacher_dir, tiny_data_dir, tmp_path):
    from bench import reconstruction

    flags = ["--teacher", tiny_teacher_dir, "--data_dir", tiny_data_dir, "--block_heads", "2", "--ffn_width", "16"]
    flags += ["--importance_sentences", "32", "--calibration_sentences", "32", "--check_sentences", "32"]
    rows = reconstruction.main(flags + ["--seq_len", "20", "--output", str(tmp_path / "rows.csv")])
    assert [row["reconstruction"] for row in rows] == ["none", *RECONSTRUCTION.names()]
    plain, least_squares, validated = rows
    assert plain["chosen_strengths"] == least_squares["chosen_strengths"] == ""
    assert len(validated["chosen_strengths"].split()) == 3  # one choice per layer
    assert plain["layer0_bias_norm"] != least_squares["layer0_bias_norm"]  # the same pruning, refitted or not
    assert all(row["teacher_top1"] == plain["teacher_top1"] and row["sentences"] > 0 for row in rows)
    assert (tmp_path / "rows.csv").read_text().count("\n") == 4
