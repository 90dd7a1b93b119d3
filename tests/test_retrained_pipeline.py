"""Issue 3 on a tiny teacher: retrain blocks -> notebook assembles -> evaluate -> till-end -> finetune."""

import json
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

import eval_retrained_12
import retrain_single_block
import train_block_till_end
import train_full_merged_model
from conftest import REPO, storage_of
from utils.model_io import load_simplified

SHAPE = ["--block_heads", "2", "--block_d_k", "8"]
NOTEBOOK = REPO / "notebooks" / "build_bert_from_retrained_12.ipynb"


def run_notebook(parameters: dict, workdir: Path) -> nbformat.NotebookNode:
    """Execute the notebook headless with values appended to its tagged parameters cell (as papermill does)."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n" + "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    return notebook


def outputs(notebook) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") + output.get("data", {}).get("text/markdown", ""))
    return "\n".join(texts)


@pytest.fixture
def flags(run_flags):
    return run_flags() + SHAPE


def test_retrained_pipeline(flags, run_flags, tiny_teacher_dir, tiny_data_dir, capsys):
    storage = storage_of(flags)
    for block in (0, 1):
        retrain_single_block.main(flags + ["--block", str(block), "--epochs", "1"])

    notebook = run_notebook(
        {
            "storage_directory": str(storage.root),
            "teacher": tiny_teacher_dir,
            "block_heads": 2,
            "block_d_k": 8,
            "blocks": None,
            "source": "block",
            "data_dir": tiny_data_dir,
            "eval_sentences": 20,
            "seq_len": 40,
            "seed": 42,
            "export_hf": str(storage.root / "exported"),
        },
        storage.root,
    )
    text = outputs(notebook)
    assert "no checkpoint for layers [2]: they keep the teacher's attention" in text
    assert "| assembled |" in text and "student_attention" in text
    model_dir = storage.retrained_model(heads=2, d_k=8)
    model, _, meta = load_simplified(model_dir)
    assert [layer.origin["kind"] for layer in model.layers] == ["student_attention", "student_attention", "teacher"]
    assert meta["missing"] == [2]
    exported, _, _ = load_simplified(storage.root / "exported")  # the notebook's last cell
    assert (storage.root / "exported" / "modeling_sitra_bert.py").exists()
    assert torch.equal(exported.layers[1].attention.key.weight, model.layers[1].attention.key.weight)
    block0 = torch.load(storage.block_checkpoint("block", 0, heads=2, d_k=8), weights_only=True)["model"]
    assert torch.equal(model.layers[0].attention.query.weight, block0["query.weight"])

    eval_flags = run_flags(
        drop=["batch_size", "eval_sentences"], percentage_data=0.5, reference=tiny_teacher_dir, latency_repeats=2
    )
    report = eval_retrained_12.main(eval_flags + SHAPE)
    results = storage.results("retrained_8_2")
    assert json.loads((results / "metrics.json").read_text()) == json.loads(json.dumps(report))
    teacher, assembled = report["models"]["teacher"], report["models"]["retrained_8_2"]
    assert report["sentences"] == 48 and teacher["in_reference_top1"] == 1.0  # the reference is the teacher itself
    assert 0 <= assembled["agree_top1"] <= 1 and assembled["kl_from_teacher"] >= 0
    assert assembled["parameters"] < teacher["parameters"] and assembled["flop_ratio"] < 1
    assert teacher["latency_ms_b64"] > 0 and "speedup_b64" in assembled
    rows = (results / "predictions.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["sentence", "true", "teacher", "retrained_8_2", "reference_top10"]
    assert len(rows) == 49 and "[MASK]" in rows[1] and len(rows[1].split("\t")[-1].split()) == 10
    assert "| retrained_8_2 |" in (results / "metrics.md").read_text()

    history = train_block_till_end.main(flags + ["--block", "1", "--epochs", "1", "--lr", "1e-3"])
    assert "student attention initialised from" in capsys.readouterr().err  # the retrain_single_block checkpoint
    assert [record["epoch"] for record in history] == [0, 1] and history[-1]["kl_from_teacher"] >= 0

    history = train_full_merged_model.main(flags + ["--epochs", "1", "--lr", "1e-3"])
    finetuned, _, meta = load_simplified(f"{model_dir}_finetuned")
    assert meta["finetuned_from"] == str(model_dir) and history[-1]["epoch"] == 1
    assert not torch.equal(finetuned.layers[0].attention.query.weight, model.layers[0].attention.query.weight)
    assert torch.equal(finetuned.layers[0].ffn_in.weight, model.layers[0].ffn_in.weight)  # no --train_ffn
    assert torch.equal(finetuned.layers[2].attention.query.weight, model.layers[2].attention.query.weight)

    train_full_merged_model.main(flags + ["--epochs", "1", "--lr", "1e-3", "--train_layers"])  # the same healing
    whole, _, meta = load_simplified(f"{model_dir}_finetuned-layers")  # as layer drop and merged models get
    assert meta["train_layers"] and not torch.equal(whole.layers[2].ffn_in.weight, model.layers[2].ffn_in.weight)
    assert not torch.equal(whole.layers[2].attention.query.weight, model.layers[2].attention.query.weight)
    train_full_merged_model.main(flags + ["--epochs", "1", "--lr", "1e-3", "--train_layers", "--healing", "layerwise"])
    layerwise, _, meta = load_simplified(f"{model_dir}_finetuned-layers_layerwise")  # its own run and model
    assert not torch.equal(layerwise.layers[2].ffn_in.weight, whole.layers[2].ffn_in.weight)


def test_till_end_refuses_a_checkpoint_of_another_shape(flags, capsys):
    retrain_single_block.main(flags + ["--block", "0", "--epochs", "1"])
    checkpoint = storage_of(flags).block_checkpoint("block", 0, heads=2, d_k=8)
    with pytest.raises(SystemExit):
        train_block_till_end.main(flags + ["--block", "0", "--block_heads", "4", "--init_from", str(checkpoint)])
    assert (
        f"error: --init_from {checkpoint}: checkpoint was trained with block_heads=2 (expected 4)"
        in capsys.readouterr().err
    )
