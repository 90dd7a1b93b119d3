"""ONNX export (export_hf.py --onnx): ONNX Runtime gives sitra's logits for every kind of simplified model (mixed
heads, merged, layer-drop, narrow and per-layer feed-forwards), on batches of other shapes than the export's; the
masked-only model equals the full one at the [MASK] positions; the graph fused by ONNX Runtime's optimizer fuses
every layer's attention of every kind and still gives sitra's logits, and a fusion that would not is undone for its
layer; the int8 copies run, mostly agree, and leave the embeddings and head in fp32 when told."""

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from transformers import BertForMaskedLM

import export_hf
from bench import fixed_costs, latency, onnx_accuracy
from conftest import one_line_error, tiny_config
from models import (
    FFN_INIT,
    FeedForward,
    SimplifiedBert,
    assemble,
    attention_of_heads,
    feed_forward_of_neurons,
    merged_layer,
    student_attention,
)
from utils import onnx_optimize
from utils.benchmark import timing_batch
from utils.model_io import save_simplified
from utils.onnx_export import INT8_PARTS, export_onnx, onnx_session, quantize_int8
from utils.onnx_optimize import INT8_FORMS, export_fused_onnx

SENTENCES = ["the cat sat on the [MASK] .", "a [MASK] river flows into the [MASK] near a small town in the north ."]


def build(kind: str, base: SimplifiedBert) -> SimplifiedBert:
    torch.manual_seed(1)
    if kind == "teacher":
        return base
    if (
        kind == "compound"
    ):  # pruned heads (2 of 4), a retrained 3 x 4 attention, narrowed feed-forwards, a dropped layer
        with torch.no_grad():
            pruned = attention_of_heads(base.layers[0].attention, [0, 2], 0.1)
        narrow = FeedForward.of_layer(feed_forward_of_neurons(base.layers[1], list(range(0, 64, 4))))  # width 16
        return assemble(
            base,
            attentions={0: pruned, 1: student_attention(base, 3, 4, 0.1)},
            dropped={2},
            feed_forwards={0: FFN_INIT["random"].function(base, 0, 24), 1: narrow},
        )
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


def sitra_logits(model, batch, mask_token_id: int | None) -> np.ndarray:
    """sitra's logits at every position, or at the [MASK]s only."""
    with torch.no_grad():
        hidden = model.encode(batch["input_ids"], batch["attention_mask"])
        if mask_token_id is not None:
            hidden = hidden[batch["input_ids"] == mask_token_id]
        return model.mlm_head(hidden).numpy()


def run(path, batch) -> np.ndarray:
    return onnx_session(path).run(None, {key: batch[key].numpy() for key in ("input_ids", "attention_mask")})[0]


FUSED = {"Attention", "BiasGelu", "EmbedLayerNormalization"}


@pytest.mark.parametrize(
    "kind,masked_only,skip_layer_norm",
    [(kind, True, False) for kind in ("teacher", "mixed_heads", "narrow_ffn", "merged", "compound")]
    + [("compound", False, False), ("compound", True, True)],
)
def test_the_fused_graph_fuses_every_layer_and_gives_sitras_logits(
    kind, masked_only, skip_layer_norm, base, tokenizer, tmp_path
):
    """Every layer's attention becomes one fused node whatever its heads, d_k and feed-forward width, and ONNX Runtime
    still gives sitra's logits on a padded batch (the masked-only export gathers after the fused attention); the
    residual Add + LayerNorm are fused only when asked."""
    model = build(kind, base).eval()
    mask = tokenizer.mask_token_id if masked_only else None
    fused = export_fused_onnx(model, tmp_path / "fused.onnx", mask, skip_layer_norm)
    assert fused.fused_layers == list(range(len(model.layers))) and fused.unfused_layers == {}
    assert FUSED <= set(fused.operators) and fused.operators["Attention"] == len(model.layers)
    assert fused.operators.get("SkipLayerNormalization", 0) == (2 * len(model.layers) if skip_layer_norm else 0)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    logits, expected = run(fused.path, batch), sitra_logits(model, batch, mask)
    if not masked_only:
        real = batch["attention_mask"].bool().numpy()
        logits, expected = logits[real], expected[real]
    assert logits.shape == expected.shape and np.abs(logits - expected).max() < 1e-4


def test_a_layer_whose_fusion_is_wrong_stays_unfused(base, tokenizer, tmp_path, monkeypatch):
    """The optimizer matches patterns, not numbers: should it fuse a layer wrongly (here: layer 1's fused node
    told one head instead of three), that layer is exported unfused, said so, and the logits stay sitra's."""
    fuse_graph = onnx_optimize.fuse_graph

    def fuse_layer_1_wrongly(path, skip_layer_norm):
        graph = fuse_graph(path, skip_layer_norm)
        for node in graph.graph.node:
            if node.op_type == "Attention" and any("layers.1/" in name for name in node.output):
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("num_heads", 1))
        return graph

    monkeypatch.setattr(onnx_optimize, "fuse_graph", fuse_layer_1_wrongly)
    torch.manual_seed(1)
    model = assemble(base, attentions={1: student_attention(base, 3, 4, 0.1)}, dropped={2}).eval()  # 2 layers
    with torch.no_grad():  # a random layer barely moves the logits: make layer 1's attention count
        model.layers[1].attention.output.weight.mul_(20)
    fused = export_fused_onnx(model, tmp_path / "fused.onnx", tokenizer.mask_token_id)
    assert fused.fused_layers == [0] and list(fused.unfused_layers) == [1]
    assert "gave other logits" in fused.unfused_layers[1]
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    expected = sitra_logits(model, batch, tokenizer.mask_token_id)
    assert np.abs(run(fused.path, batch) - expected).max() < 1e-4


@pytest.fixture(scope="module")
def fused_full_logits(base, tmp_path_factory):
    """The fused graph of the compound model, every position's logits (more positions to compare int8 on)."""
    model = build("compound", base).eval()
    return model, export_fused_onnx(model, tmp_path_factory.mktemp("fused") / "compound.onnx").path


@pytest.fixture(scope="module")
def int8_copies(fused_full_logits, tmp_path_factory) -> dict[tuple, object]:
    """The compound model's fused graph quantized three ways: every part, the encoder only, the head only."""
    _, path = fused_full_logits
    folder = tmp_path_factory.mktemp("int8")
    parts_list = (INT8_PARTS, ("encoder",), ("head",))
    return {parts: quantize_int8(path, folder / f"int8_{'_'.join(parts)}.onnx", parts) for parts in parts_list}


def test_int8_copies_run_and_mostly_agree(fused_full_logits, int8_copies, tokenizer):
    """Every weight int8, the encoder's only or the head's only: each runs and mostly keeps fp32's top-1. (A random
    tiny model's top two logits are near-ties, so int8 of the 30,522-row head flips some; the encoder alone fewer.)"""
    _, path = fused_full_logits
    batch = tokenizer(SENTENCES * 2, padding=True, return_tensors="pt")
    real = batch["attention_mask"].bool().numpy()
    fp32 = run(path, batch)[real]
    for parts, agreement in ((INT8_PARTS, 0.75), (("encoder",), 0.95), (("head",), 0.75)):
        int8 = int8_copies[parts]
        assert int8.stat().st_size < path.stat().st_size
        logits = run(int8, batch)[real]
        assert not np.array_equal(logits, fp32) and np.corrcoef(logits.ravel(), fp32.ravel())[0, 1] > 0.99
        assert (logits.argmax(-1) == fp32.argmax(-1)).mean() >= agreement


@pytest.mark.parametrize("parts", [INT8_PARTS, ("encoder",), ("head",)])
def test_int8_quantizes_the_parts_named_and_leaves_the_others_fp32(parts, fused_full_logits, int8_copies):
    """The word embeddings [V, H] and the head's decoder [H, V] are int8 exactly when their part is named; every
    layer's attention and feed-forward when the encoder is."""
    model, _ = fused_full_logits
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    graph = onnx.load(str(int8_copies[parts])).graph
    tables = {tuple(t.dims): t.data_type for t in graph.initializer if vocab in t.dims and hidden in t.dims}
    assert set(tables) == {(vocab, hidden), (hidden, vocab)}
    assert (tables[(vocab, hidden)] != onnx.TensorProto.FLOAT) == ("embeddings" in parts)
    assert (tables[(hidden, vocab)] != onnx.TensorProto.FLOAT) == ("head" in parts)
    ops = [node.op_type for node in graph.node]
    assert ops.count("QAttention") == (len(model.layers) if "encoder" in parts else 0)
    assert ("QEmbedLayerNormalization" in ops) == ("embeddings" in parts)


def test_the_script_writes_the_fused_graph_and_an_encoder_only_int8_copy(base, tokenizer, tmp_path):
    model = build("mixed_heads", base)
    save_simplified(model, tokenizer, tmp_path / "model")
    onnx_file = tmp_path / "out" / "mixed.onnx"
    export_hf.main(
        ["--model", str(tmp_path / "model"), "--onnx", str(onnx_file), "--onnx_masked_only", "--onnx_fused",
         "--onnx_int8", "--onnx_int8_parts", "encoder"]
    )  # fmt: skip
    int8_file = onnx_file.with_suffix(".int8.onnx")
    fused_ops = [node.op_type for node in onnx.load(str(onnx_file)).graph.node]
    int8_ops = [node.op_type for node in onnx.load(str(int8_file)).graph.node]
    assert fused_ops.count("Attention") == int8_ops.count("QAttention") == 3 and "EmbedLayerNormalization" in int8_ops
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    expected = sitra_logits(model.eval(), batch, tokenizer.mask_token_id)
    assert np.abs(run(onnx_file, batch) - expected).max() < 1e-4
    assert (run(int8_file, batch).argmax(-1) == expected.argmax(-1)).all()


def test_onnx_without_a_file_name_is_refused(capsys, tmp_path):
    message = one_line_error(capsys, export_hf.main, ["--model", str(tmp_path), "--onnx", str(tmp_path / "x.bin")])
    assert "--onnx" in message and "expected a file name ending .onnx" in message


@pytest.mark.parametrize(
    "flags,needs",
    [
        (["--output_dir", "out", "--onnx_fused"], "--onnx_fused needs --onnx"),
        (["--output_dir", "out", "--onnx_masked_only"], "--onnx_masked_only needs --onnx"),
        (["--onnx", "m.onnx", "--onnx_int8_parts", "head"], "--onnx_int8_parts needs --onnx_int8"),
        (["--onnx", "m.onnx", "--onnx_shortlist", "8"], "--onnx_shortlist needs --onnx_masked_only"),
    ],
)
def test_an_onnx_flag_without_what_it_modifies_is_refused(flags, needs, capsys, tmp_path):
    """A flag that would do nothing is an error, not silence; nothing is written."""
    message = one_line_error(capsys, export_hf.main, ["--model", str(tmp_path / "model"), *flags])
    assert needs in message and not (tmp_path / "out").exists()


def test_the_latency_benchmark_runs_every_model_in_every_runtime(base, tokenizer, tiny_teacher_dir, tmp_path):
    """Smoke mode: one batch size, one length, one thread, two repeats, four of the runtimes (each ONNX form is
    exported by the same function, tested with the accuracy and profile benchmarks); timings are asserted nowhere."""
    save_simplified(build("layer_drop", base), tokenizer, tmp_path / "dropped")
    runtimes = ["pytorch", "ort_fp32", "ort_fused", "ort_fused_int8_head"]
    result = latency.main(
        ["--teacher", tiny_teacher_dir, "--models", str(tmp_path / "dropped"), "--batch_sizes", "2", "--seq_lens", "12",
         "--threads", "1", "--repeats", "2", "--runtimes", *runtimes, "--storage_directory", str(tmp_path / "bench")]
    )  # fmt: skip
    rows = {(row["model"], row["runtime"]): row for row in result["rows"]}
    assert set(rows) == {(m, r) for m in ("teacher", "dropped") for r in runtimes}
    assert rows[("dropped", "ort_fused_int8_head")]["flop_reduction"] == pytest.approx(1.5)
    assert all(rows[("teacher", runtime)]["speedup"] == 1.0 for runtime in runtimes)
    table = (next((tmp_path / "bench").glob("latency_*")) / "latency.md").read_text()
    assert "| " + " | ".join(runtimes) + " |" in table and "Against the teacher's fused fp32 graph" in table
    assert len([line for line in table.splitlines() if line.startswith("| dropped | 1.50x |")]) == 1  # side by side


def test_the_latency_benchmark_refuses_an_unknown_runtime(capsys, tiny_teacher_dir, tmp_path):
    argv = ["--teacher", tiny_teacher_dir, "--runtimes", "pytorch", "tensorrt", "--storage_directory", str(tmp_path)]
    message = one_line_error(capsys, latency.main, argv)
    assert "--runtimes" in message and "tensorrt" in message and not list(tmp_path.iterdir())


def test_the_benchmarks_refuse_shortlist_flags_without_a_shortlisted_form(capsys, tiny_teacher_dir, tmp_path):
    """--shortlist and the data flags only shape the *_short forms: given without one, they would change nothing."""
    from bench import onnx_accuracy

    base = ["--teacher", tiny_teacher_dir, "--storage_directory", str(tmp_path)]
    for main, argv, flag in [
        (latency.main, ["--runtimes", "ort_fused", "--shortlist", "100"], "--shortlist"),
        (latency.main, ["--runtimes", "pytorch", "--seq_len", "12"], "--seq_len"),
        (onnx_accuracy.main, ["--forms", "ort_fused_int8", "--shortlist", "100"], "--shortlist"),
    ]:
        message = one_line_error(capsys, main, base + argv)
        assert message.startswith(f"error: {flag}: only the shortlisted forms") and not list(tmp_path.iterdir())


def test_the_fixed_cost_benchmark_profiles_every_part(base, tokenizer, tiny_teacher_dir, tmp_path):
    """Smoke mode (no compile, two repeats): each PyTorch variant timed; the ONNX profile splits the call into
    embeddings, each layer, the vocabulary head and the session's overhead."""
    save_simplified(build("layer_drop", base), tokenizer, tmp_path / "dropped")
    result = fixed_costs.main(
        ["--teacher", tiny_teacher_dir, "--models", str(tmp_path / "dropped"), "--seq_len", "12", "--repeats", "2",
         "--no_compile", "--onnx_forms", "ort_fp32", "ort_fused_skipln",
         "--storage_directory", str(tmp_path / "bench")]
    )  # fmt: skip
    assert set(result["pytorch_ms"]) == {f"{m} / {v}" for m in ("teacher", "dropped") for v in ("eager", "no mask")}
    profiles = result["onnxruntime_profile_ms"]
    assert set(profiles) == {f"{m} / {f}" for m in ("teacher", "dropped") for f in ("ort_fp32", "ort_fused_skipln")}
    for form in ("ort_fp32", "ort_fused_skipln"):  # fused nodes too are assigned to their layer, embeddings or head
        teacher, dropped = profiles[f"teacher / {form}"], profiles[f"dropped / {form}"]
        assert {"embeddings", "layer 0", "layer 2", "vocabulary head", "session overhead"} <= set(teacher)
        assert sum(part.startswith("layer") for part in dropped) < sum(part.startswith("layer") for part in teacher)


def test_the_int8_price_is_measured_on_the_same_masks(tiny_teacher_dir, tiny_data_dir, tmp_path):
    """Smoke mode: a few test sentences; each int8 form gets its top-1, its paired difference from the fp32 graph
    and its agreement with it, every figure with an interval; the per-sentence outcomes are kept."""
    result = onnx_accuracy.main(
        ["--teacher", tiny_teacher_dir, "--data_dir", tiny_data_dir, "--max_sentences", "40", "--sentences", "24",
         "--eval_batch_size", "8", "--forms", *INT8_FORMS, "ort_fused_short", "--shortlist", "50",
         "--storage_directory", str(tmp_path / "bench")]
    )  # fmt: skip
    forms = result["models"]["teacher"]
    assert result["sentences"] == 24 and set(forms) == {"ort_fused", *INT8_FORMS, "ort_fused_short"}
    assert result["shortlist"] == 50  # (a shortlist may win top-1 too: an argmax over fewer tokens can hit)
    for form in (*INT8_FORMS, "ort_fused_short"):
        figures = forms[form]
        assert figures["top1_vs_fp32_low"] <= figures["top1_vs_fp32"] <= figures["top1_vs_fp32_high"]
        assert figures["loses_over_half_a_point"] == (figures["top1_vs_fp32"] < -0.005)
        assert 0 <= figures["agree_fp32_low"] <= figures["agree_fp32"] <= figures["agree_fp32_high"] <= 1
    folder = next((tmp_path / "bench").glob("onnx_accuracy_*"))
    with np.load(folder / "per_sentence.npz") as arrays:
        assert arrays["teacher/ort_fused_int8/top1"].shape == arrays["teacher/ort_fused/top1"].shape == (24,)
    assert "| teacher | ort_fused_int8 |" in (folder / "onnx_accuracy.md").read_text()


def test_without_padding_the_mask_can_be_left_out(base):
    """The benchmark's forward without the padding mask is a valid variant: on an unpadded batch it gives
    sitra's logits."""
    batch = timing_batch(base.config.vocab_size, 2, 9, torch.device("cpu"))
    with torch.no_grad():
        assert torch.allclose(base(**batch), fixed_costs.unmasked_forward(base, **batch), atol=1e-5)


def test_a_shortlisted_head_gives_the_full_heads_logits_of_its_tokens_and_no_others(base, tokenizer, tmp_path):
    """The fused graph of a compound model with a shortlisted head: the shortlisted tokens' logits are the full
    head's within 1e-4, every other token's is NO_LOGIT; its int8-head copy quantizes the shortlisted decoder."""
    from utils.onnx_export import NO_LOGIT
    from utils.onnx_optimize import export_forms

    model = build("compound", base).eval()
    mask = tokenizer.mask_token_id
    shortlist = list(range(5, model.config.vocab_size, 3))
    files = export_forms(model, tmp_path, "m", mask, ["ort_fused_short", "ort_fused_int8_head_short"], shortlist)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    logits, expected = run(files["ort_fused_short"], batch), sitra_logits(model, batch, mask)
    assert logits.shape == expected.shape
    assert np.abs(logits[:, shortlist] - expected[:, shortlist]).max() < 1e-4
    others = np.setdiff1d(np.arange(model.config.vocab_size), shortlist)
    assert (logits[:, others] == NO_LOGIT).all()
    quantized = onnx.load(str(files["ort_fused_int8_head_short"]))
    assert any(node.op_type == "DynamicQuantizeMatMul" or "Integer" in node.op_type for node in quantized.graph.node)
    with pytest.raises(ValueError, match="needs the shortlist"):
        export_forms(model, tmp_path, "n", mask, ["ort_fused_short"])


def test_the_shortlist_is_the_most_frequent_maskable_tokens():
    from utils.data import MaskedSentences, TokenIds, frequent_tokens

    ids = TokenIds(mask=4, pad=0, vocab_size=20, special=frozenset({0, 1, 2, 3, 4}))
    sentences = MaskedSentences([[2, 7, 7, 9, 3], [2, 9, 7, 11, 12, 3], [2, 12, 3]], ids, seed=0)
    assert frequent_tokens(sentences, 2) == [7, 9]  # 7 three times, 9 twice; [CLS]/[SEP] never counted
    assert frequent_tokens(sentences, 3) == [7, 9, 12]  # 12 twice beats 11 once
    assert frequent_tokens(sentences, 10) == [7, 9, 11, 12]


def test_the_script_writes_a_shortlisted_head_counted_on_the_training_split(base, tokenizer, tiny_data_dir, tmp_path):
    from utils.onnx_export import NO_LOGIT

    save_simplified(build("layer_drop", base), tokenizer, tmp_path / "model")
    onnx_file = tmp_path / "short.onnx"
    export_hf.main(
        ["--model", str(tmp_path / "model"), "--onnx", str(onnx_file), "--onnx_masked_only", "--onnx_shortlist", "30",
         "--data_dir", tiny_data_dir, "--max_sentences", "40"]
    )  # fmt: skip
    logits = run(onnx_file, tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    assert ((logits != NO_LOGIT).sum(-1) == 30).all()
