"""Issue 4 on a 5-layer tiny teacher: merge pairs, condition the chain, finetune, compare with layer drop."""

import json

import pytest
import torch

import eval_merge_layer
import evaluate_fully_merged_layer
import finetune_conditioned_fully_merged
import finetune_fully_merged
import retrain_merge
from conftest import one_line_error, storage_of
from models import assemble, merged_layer
from utils.data import eval_loader, load_masked_splits
from utils.device import to_device
from utils.model_io import load_simplified
from utils.objectives import MergeDistillation
from utils.teacher import load_teacher

SHAPE = ["--block_heads", "2", "--block_d_k", "8"]


@pytest.fixture
def flags(run_flags, tiny_teacher_5_layers):
    return run_flags(teacher=tiny_teacher_5_layers) + SHAPE


@pytest.fixture
def eval_flags(run_flags, tiny_teacher_5_layers):
    drop = ["batch_size", "eval_sentences"]
    return run_flags(teacher=tiny_teacher_5_layers, drop=drop, reference="none", latency_repeats=1) + SHAPE


def test_merge_signal_and_conditioning(tiny_teacher_5_layers, tiny_data_dir):
    teacher = load_teacher(tiny_teacher_5_layers)
    splits = load_masked_splits(tiny_data_dir, teacher.tokenizer, 40, 8, seed=0)
    batch = to_device(next(iter(eval_loader(splits.train, 8))), torch.device("cpu"))
    model, ids, mask = teacher.model, batch["input_ids"], batch["attention_mask"]
    layer = merged_layer(model, 2, 2, 8, 0.0)
    unconditioned = MergeDistillation(model, 2, layer, mlm_metrics=False)
    hidden_in, target = unconditioned.signal(batch)
    assert not unconditioned.conditioned
    assert torch.allclose(hidden_in, model.encode(ids, mask, stop=2))
    assert torch.allclose(target, model.encode(ids, mask, stop=4), atol=1e-6)
    first = merged_layer(model, 0, 2, 8, 0.0).eval()
    prefix = assemble(model, merged={0: first})
    conditioned_in, conditioned_target = MergeDistillation(
        model, 2, layer, prefix, prefix_stop=1, mlm_metrics=False
    ).signal(batch)
    assert torch.allclose(conditioned_in, first(model.embeddings(input_ids=ids), mask.bool()))
    assert torch.allclose(conditioned_target, target)


def test_merge_pipeline(flags, eval_flags, run_flags, tiny_teacher_5_layers, capsys):
    storage = storage_of(flags)
    assert "--block 4: the teacher has 5 layers, expected the first of two adjacent layers (0..3)" in one_line_error(
        capsys, retrain_merge.main, flags + ["--block", "4"]
    )
    history = retrain_merge.main(flags + ["--block", "0", "--epochs", "2", "--lr", "3e-3"])
    assert history[-1]["merge_mse"] < history[0]["merge_mse"] and "merged_top1" in history[-1]

    message = one_line_error(capsys, finetune_fully_merged.main, flags + ["--epochs", "1"])
    assert "no merge checkpoint (heads 2, d_k 8) for pairs 2-3 under" in message and "retrain_merge.py" in message
    retrain_merge.main(flags + ["--block", "2", "--epochs", "1"])

    report = eval_merge_layer.main(eval_flags + ["--block", "0"])
    assert set(report["models"]) == {"teacher", "merge_0_8_2"}
    assert report["models"]["merge_0_8_2"]["flop_ratio"] < 1
    assert (storage.results("merge_0_8_2") / "metrics.json").exists()

    fresh = run_flags(teacher=tiny_teacher_5_layers, storage=storage.root / "elsewhere") + SHAPE
    message = one_line_error(capsys, finetune_conditioned_fully_merged.main, fresh + ["--block", "2"])
    assert "the conditioned layers of pairs 0-1 are missing" in message
    histories = finetune_conditioned_fully_merged.main(flags + ["--all", "--epochs", "1"])
    assert sorted(histories) == [0, 2]
    assert "warm-started from a retrain_merge checkpoint" in capsys.readouterr().err

    for extra in ([], ["--source", "conditioned"], ["--baseline", "layer_drop"]):
        finetune_fully_merged.main(flags + ["--epochs", "1"] + extra)
    report = evaluate_fully_merged_layer.main(eval_flags)
    models = report["models"]
    assert set(models) == {"teacher", "merged_8_2", "merged_8_2_conditioned", "layer_drop"}
    assert models["merged_8_2"]["layers"] == models["layer_drop"]["layers"] == 3 and models["teacher"]["layers"] == 5
    assert models["merged_8_2"]["parameters"] < models["teacher"]["parameters"]
    written = json.loads((storage.fully_merged_results(heads=2, d_k=8) / "metrics.json").read_text())
    assert set(written["models"]) == set(models)
    merged, _, meta = load_simplified(storage.merged_model(heads=2, d_k=8))
    retrained = torch.load(storage.block_output("merge", 0, heads=2, d_k=8), weights_only=True)["model"]
    assert not torch.equal(merged.layers[0].ffn_in.weight, retrained["ffn_in.weight"])  # finetuning moved it
    assert meta["sources"]["0"].endswith("merge_0_8_2/best.pt")
    # a merge student trained on since: the finished model is made of other layers now, so it is refused (loudly)
    capsys.readouterr()
    finetune_fully_merged.main(flags + ["--epochs", "1"])  # the same: nothing to do
    assert "is finished" in capsys.readouterr().err
    retrain_merge.main(flags + ["--block", "0", "--epochs", "3", "--lr", "3e-3"])
    message = one_line_error(capsys, finetune_fully_merged.main, flags + ["--epochs", "1"])
    assert "does not match the flags: merged_fingerprint=" in message
