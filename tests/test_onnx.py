"""ONNX export (export_hf.py --onnx): ONNX Runtime gives sitra's logits for every kind of simplified model (mixed
heads, merged, layer-drop, narrow and per-layer feed-forwards), on batches of other shapes than the export's; the
masked-only model equals the full one at the [MASK] positions; the int8 copy is smaller and agrees closely."""

import numpy as np
import pytest
import torch
from transformers import BertForMaskedLM

import export_hf
from bench import fixed_costs, latency
from conftest import one_line_error, tiny_config
from models import FFN_INIT, SimplifiedBert, assemble, feed_forward_of_neurons, merged_layer, student_attention
from utils.benchmark import timing_batch
from utils.model_io import save_simplified
from utils.onnx_export import export_onnx, onnx_session

SENTENCES = ["the cat sat on the [MASK] .", "a [MASK] river flows into the [MASK] near a small town in the north ."]


def build(kind: str, base: SimplifiedBert) -> SimplifiedBert:
    torch.manual_seed(1)
    if kind == "mixed_heads":
        return assemble(base, attentions={0: student_attention(base, 2, 8, 0.1), 1: student_attention(base, 3, 4, 0.1)})
    if kind == "merged":
        return assemble(base, merged={0: merged_layer(base, 0, 4, 8, 0.1, "first", intermediate_size=16)})
    if kind == "layer_drop":
        return assemble(base, dropped={1})
    narrow = [feed_forward_of_neurons(layer, list(range(0, 64, 2))) for layer in base.layers]  # width 32 everywhere
    if kind == "narrow_ffn":
        return SimplifiedBert(base.config, base.embeddings, narrow, base.mlm_head)
    return assemble(base, feed_forwards={2: FFN_INIT["random"].function(base, 2, 24)})  # per-layer widths


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return SimplifiedBert.from_teacher(BertForMaskedLM(tiny_config()).eval()).eval()


@pytest.mark.parametrize("kind", ["mixed_heads", "merged", "layer_drop", "narrow_ffn", "per_layer_ffn"])
def test_onnx_runtime_gives_sitras_logits(kind, base, tokenizer, tmp_path):
    model = build(kind, base).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")  # 2 sentences, padded: not the export's shape
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        expected = model.mlm_head(model.encode(ids, mask))
    full = onnx_session(export_onnx(model, tmp_path / "full.onnx"))
    logits = full.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    real = mask.bool().numpy()
    assert logits.shape == tuple(expected.shape) and np.abs(logits - expected.numpy())[real].max() < 1e-4
    masked = onnx_session(export_onnx(model, tmp_path / "masked.onnx", tokenizer.mask_token_id))
    at_masks = masked.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    positions = (ids == tokenizer.mask_token_id).numpy()
    assert at_masks.shape[0] == 3 and np.abs(at_masks - logits[positions]).max() < 1e-5


def test_the_script_writes_onnx_and_an_int8_copy(base, tokenizer, tmp_path):
    save_simplified(build("merged", base), tokenizer, tmp_path / "model")
    onnx_file = tmp_path / "out" / "merged.onnx"
    export_hf.main(["--model", str(tmp_path / "model"), "--onnx", str(onnx_file), "--onnx_masked_only", "--onnx_int8"])
    int8_file = onnx_file.with_suffix(".int8.onnx")
    assert onnx_file.is_file() and int8_file.is_file() and int8_file.stat().st_size < onnx_file.stat().st_size
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    fp32, int8 = (onnx_session(path).run(None, inputs)[0] for path in (onnx_file, int8_file))
    assert fp32.shape == int8.shape == (3, 30522)
    assert np.corrcoef(fp32.ravel(), int8.ravel())[0, 1] > 0.9  # quantized, not identical


def test_onnx_without_a_file_name_is_refused(capsys, tmp_path):
    message = one_line_error(capsys, export_hf.main, ["--model", str(tmp_path), "--onnx", str(tmp_path / "x.bin")])
    assert "--onnx" in message and "expected a file name ending .onnx" in message


def test_the_latency_benchmark_runs_every_model_in_both_runtimes(base, tokenizer, tiny_teacher_dir, tmp_path):
    """Smoke mode: one batch size, one length, one thread, two repeats; timings are asserted nowhere."""
    save_simplified(build("layer_drop", base), tokenizer, tmp_path / "dropped")
    result = latency.main(
        ["--teacher", tiny_teacher_dir, "--models", str(tmp_path / "dropped"), "--batch_sizes", "2", "--seq_lens", "12",
         "--threads", "1", "--repeats", "2", "--storage_directory", str(tmp_path / "bench")]
    )  # fmt: skip
    rows = {(row["model"], row["runtime"]): row for row in result["rows"]}
    assert set(rows) == {(m, r) for m in ("teacher", "dropped") for r in ("pytorch", "onnxruntime")}
    assert rows[("dropped", "onnxruntime")]["flop_reduction"] == pytest.approx(1.5)
    assert (
        rows[("teacher", "pytorch")]["speedup"] == 1.0
        and (next((tmp_path / "bench").glob("latency_*")) / "latency.md").is_file()
    )


def test_the_fixed_cost_benchmark_profiles_every_part(base, tokenizer, tiny_teacher_dir, tmp_path):
    """Smoke mode (no compile, two repeats): each PyTorch variant timed; the ONNX profile splits the call into
    embeddings, each layer, the vocabulary head and the session's overhead."""
    save_simplified(build("layer_drop", base), tokenizer, tmp_path / "dropped")
    result = fixed_costs.main(
        ["--teacher", tiny_teacher_dir, "--models", str(tmp_path / "dropped"), "--seq_len", "12", "--repeats", "2",
         "--no_compile", "--storage_directory", str(tmp_path / "bench")]
    )  # fmt: skip
    assert set(result["pytorch_ms"]) == {f"{m} / {v}" for m in ("teacher", "dropped") for v in ("eager", "no mask")}
    teacher, dropped = result["onnxruntime_profile_ms"]["teacher"], result["onnxruntime_profile_ms"]["dropped"]
    assert {"embeddings", "layer 0", "vocabulary head", "session overhead"} <= set(teacher)
    assert sum(part.startswith("layer") for part in dropped) < sum(part.startswith("layer") for part in teacher)


def test_without_padding_the_mask_can_be_left_out(base):
    """The benchmark's forward without the padding mask is a valid variant: on an unpadded batch it gives
    sitra's logits."""
    batch = timing_batch(base.config.vocab_size, 2, 9, torch.device("cpu"))
    with torch.no_grad():
        assert torch.allclose(base(**batch), fixed_costs.unmasked_forward(base, **batch), atol=1e-5)
