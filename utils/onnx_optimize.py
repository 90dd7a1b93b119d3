"""The fused graph of an exported model: what ONNX Runtime's transformer optimizer (``onnxruntime.transformers.
optimizer``, model type bert) makes of it — one Attention node per layer, bias-GELU and the embedding LayerNorm
fused, and when asked the residual Add + LayerNorm (skip-LayerNorm) — checked against sitra's own logits before it is
written.

The skip-LayerNorm fusion is left out by default: on this CPU its kernel is slower than the Add and LayerNorm it
replaces (utils/onnx_export.py says by how much; ``skip_layer_norm=True`` puts it in).

The optimizer fuses attention by matching the subgraph of BERT's classic eager attention (``QKᵀ / √d_k`` plus an
additive padding mask, softmax, times V). sitra's attention calls ``scaled_dot_product_attention``, whose export it
does not match, so the graph to fuse is exported from a view of the model whose attentions compute the same thing
in the classic form (:class:`ClassicAttention`, parameters shared). Heads and head size are read per layer from
each layer's own reshape (``num_heads=0, hidden_size=0``), so retrained and pruned layers of any shape fuse. The
optimizer checks the pattern, not the numbers (it never reads the score scale, for one), so the fused graph must
give sitra's logits on a probe batch (padded, with [MASK]s); where it does not, each fused layer is checked alone
and the wrong ones are exported in sitra's own form, which stays unfused. A layer the optimizer does not match
stays unfused too; both are reported (:class:`FusedExport`).
"""

from __future__ import annotations

import itertools
import logging
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import MultiHeadAttention, SimplifiedBert
from utils.errors import UserError
from utils.files import atomic_write
from utils.onnx_export import INT8_PARTS, export_onnx, export_wrapper, onnx_session, quantize_int8, write_graph

log = logging.getLogger(__name__)

ATTENTION_OPS = ("Attention", "MultiHeadAttention")  # what the optimizer fuses an attention subgraph into
# How far the fused graph's logits may be from sitra's, relative to the largest logit (at least 1). fp32 summation
# order: ~3e-7 of it on the tests' tiny models, 5e-6 to 8e-6 absolute on the offline teacher; one layer fused with
# the wrong head count: ~2e-5 on a tiny random model (whose layers barely move the logits), far more on a trained one.
RELATIVE_TOLERANCE = 1e-5


class ClassicAttention(nn.Module):
    """``attention`` (its projections shared) computed as BERT's eager attention, the subgraph ONNX Runtime's
    optimizer fuses: the same outputs as sitra's scaled-dot-product attention wherever a token is real."""

    def __init__(self, attention: MultiHeadAttention):
        super().__init__()
        self.attention = attention

    def forward(self, hidden: torch.Tensor, key_padding_mask: torch.Tensor | None = None):
        attention = self.attention
        batch, length, _ = hidden.shape

        def split_heads(x: torch.Tensor) -> torch.Tensor:  # [B, T, heads*d_k] -> [B, heads, T, d_k]
            return x.view(batch, length, attention.heads, attention.d_k).permute(0, 2, 1, 3)

        query, key, value = (split_heads(proj(hidden)) for proj in (attention.query, attention.key, attention.value))
        scores = torch.matmul(query, key.transpose(-1, -2)) / attention.d_k**0.5
        if key_padding_mask is not None:  # (1 - mask) * lowest, added: the mask pattern the optimizer knows
            padding = 1.0 - key_padding_mask.unsqueeze(1).unsqueeze(2).to(scores.dtype)
            scores = scores + padding * torch.finfo(scores.dtype).min
        context = torch.matmul(scores.softmax(dim=-1), value)
        if attention.head_gate is not None:  # not in BERT's pattern: this layer stays unfused
            context = context * attention.head_gate.view(1, -1, 1, 1)
        context = context.permute(0, 2, 1, 3).reshape(batch, length, attention.heads * attention.d_k)
        return attention.output(context), None


def classic_form(model: SimplifiedBert, keep_unfused: set[int]) -> SimplifiedBert:
    """A view of ``model`` (every parameter shared) whose attentions are :class:`ClassicAttention` but in the
    layers ``keep_unfused``, which keep sitra's own attention."""
    layers = [
        layer if index in keep_unfused else layer.with_attention(ClassicAttention(layer.attention))
        for index, layer in enumerate(model.layers)
    ]
    return SimplifiedBert(model.config, model.embeddings, layers, model.mlm_head).eval()


class _QKVWidthNotice(logging.Filter):
    """Drops the optimizer's warning that a layer's heads × d_k differ from the hidden size: true of every retrained
    or pruned attention, and no fault (the fused node takes the widths from the weights; the result is checked)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Input hidden size")


def fuse_graph(path: Path, skip_layer_norm: bool = False):
    """ONNX Runtime's transformer optimizer on the graph at ``path``: the optimised ``onnx.ModelProto`` (attention,
    bias-GELU and embedding fusions, and with ``skip_layer_norm`` the residual Add + LayerNorm fused too)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    for name in ("fusion_attention", "onnxruntime.transformers.fusion_attention"):  # how it is imported varies
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QKVWidthNotice) for f in logger.filters):
            logger.addFilter(_QKVWidthNotice())

    options = FusionOptions("bert")
    # The Attention node takes the 0/1 mask itself: right for any padding. (The bert default reduces the mask to
    # each row's length, which assumes every pad is at the end.)
    options.use_raw_attention_mask(True)
    options.enable_skip_layer_norm = skip_layer_norm
    # num_heads=0, hidden_size=0: read from each layer's reshape, so layers of different shapes fuse each as it is.
    return optimize_model(str(path), model_type="bert", num_heads=0, hidden_size=0, optimization_options=options).model


def attention_layers(graph) -> set[int]:
    """The layers whose attention the optimizer fused, from the module path in the fused node's output name."""
    layers = set()
    for node in graph.graph.node:
        if node.op_type in ATTENTION_OPS:
            found = [re.search(r"layers\.(\d+)/", name) for name in node.output]
            layers.update(int(match.group(1)) for match in found if match)
    return layers


@dataclass
class FusedExport:
    """What :func:`export_fused_onnx` wrote: the path, which layers' attention is one fused node, which stay
    unfused and why, the fused operators counted, and the largest logit difference from sitra on the probe."""

    path: Path
    fused_layers: list[int]
    unfused_layers: dict[int, str] = field(default_factory=dict)
    operators: dict[str, int] = field(default_factory=dict)
    max_difference: float = 0.0


def probe_batch(model: SimplifiedBert, mask_token_id: int | None) -> dict[str, np.ndarray]:
    """Two sentences, the second padded, with a few [MASK]s: what the fused graph is checked on."""
    length = min(16, model.config.max_position_embeddings)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    input_ids = torch.randint(min(1000, vocab // 2), vocab, (2, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, length - length // 3 :] = 0
    if mask_token_id is not None:
        input_ids[0, [1, length // 2]] = mask_token_id
        input_ids[1, 2] = mask_token_id
    input_ids[attention_mask == 0] = 0
    return {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}


def difference_from(expected: np.ndarray, graph, feed: dict[str, np.ndarray]) -> float:
    """Largest |logit difference| of ``graph`` (a ModelProto) from ``expected`` on ``feed``, at real tokens."""
    logits = onnx_session(graph.SerializeToString()).run(None, feed)[0]
    if logits.shape != expected.shape:
        return float("inf")
    if logits.ndim == 3:  # every position: padded ones are not compared (nothing reads them)
        real = feed["attention_mask"].astype(bool)
        logits, expected = logits[real], expected[real]
    return float(np.abs(logits - expected).max())


def export_fused_onnx(
    model: SimplifiedBert,
    path: str | Path,
    mask_token_id: int | None = None,
    skip_layer_norm: bool = False,
    shortlist: list[int] | None = None,
) -> FusedExport:
    """Write the fused graph of ``model`` (fp32, eval; ``mask_token_id``: logits at the [MASK]s only, ``shortlist``:
    of those token ids only; with ``skip_layer_norm`` that fusion too) to ``path`` atomically, after checking it
    gives sitra's logits; layers whose fusion would not are kept unfused."""
    path = Path(path)
    feed = probe_batch(model, mask_token_id)
    with torch.no_grad():
        wrapper = export_wrapper(model, mask_token_id, shortlist).eval()
        expected = wrapper(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])).numpy()
    tolerance = RELATIVE_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    every_layer = set(range(len(model.layers)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.fusing-") as scratch:
        numbers = itertools.count()

        def fused(keep_unfused: set[int]):
            source = Path(scratch) / f"classic_{next(numbers)}.onnx"
            classic = export_wrapper(classic_form(model, keep_unfused), mask_token_id, shortlist)
            write_graph(classic, source, mask_token_id)
            return fuse_graph(source, skip_layer_norm)

        graph, wrong = fused(set()), set()
        if difference_from(expected, graph, feed) > tolerance:
            # Some fusion is wrong: find the layers whose fused attention alone gives other logits.
            wrong = {
                layer
                for layer in sorted(attention_layers(graph))
                if difference_from(expected, fused(every_layer - {layer}), feed) > tolerance
            }
            graph = fused(wrong)
        difference = difference_from(expected, graph, feed)
        if difference > tolerance:
            raise UserError(
                f"the fused ONNX graph of this model gives logits {difference:.2g} away from sitra's (tolerance "
                f"{tolerance:.2g}): export it without --onnx_fused"
            )
        atomic_write(path, lambda tmp: _save(graph, tmp))
    fused_layers = sorted(attention_layers(graph))
    unfused = {layer: "its fused attention gave other logits" for layer in sorted(wrong)}
    for layer in sorted(every_layer - set(fused_layers) - wrong):
        unfused[layer] = "the optimizer did not match its attention"
    for layer, why in unfused.items():
        log.warning("layer %d stays unfused in %s: %s", layer, path, why)
    operators = Counter(node.op_type for node in graph.graph.node if node.domain == "com.microsoft")
    return FusedExport(path, fused_layers, unfused, dict(sorted(operators.items())), difference)


def _save(graph, tmp: Path) -> None:
    import onnx

    onnx.save(graph, str(tmp))


# The ONNX Runtime forms a model is timed and evaluated in (bench/latency.py, bench/fixed_costs.py,
# bench/onnx_accuracy.py): the export as it is, its fused graph, and int8 copies of the fused graph.
ONNX_FORMS = {
    "ort_fp32": "the graph as exported, fp32",
    "ort_fused": "the graph fused by ONNX Runtime's transformer optimizer (attention, bias-GELU, embeddings), fp32",
    "ort_fused_skipln": "the fused graph with the residual Add + LayerNorm fused too (SkipLayerNormalization), fp32",
    "ort_fused_int8": "the fused graph, dynamically quantized: every weight int8, embeddings and head too",
    "ort_fused_int8_encoder": "the fused graph, the encoder's weights int8, the embeddings and the head fp32",
    "ort_fused_int8_head": "the fused graph, the vocabulary head's weights int8 (a quarter of its bytes), rest fp32",
    "ort_fused_short": "the fused graph, the vocabulary head over a shortlist only (--shortlist: the K most frequent "
    "tokens of the training split; every other token probability 0), fp32",
    "ort_fused_int8_head_short": "the fused graph, the shortlisted vocabulary head, its weights int8",
}
SHORTLIST_FORMS = {"ort_fused_short": "ort_fused", "ort_fused_int8_head_short": "ort_fused_int8_head"}  # -> full head
INT8_FORMS = {  # int8 form -> the parts it quantizes
    "ort_fused_int8": INT8_PARTS,
    "ort_fused_int8_encoder": ("encoder",),
    "ort_fused_int8_head": ("head",),
}


def export_forms(
    model: SimplifiedBert,
    folder: Path,
    name: str,
    mask_token_id: int | None,
    forms,
    shortlist: list[int] | None = None,
) -> dict[str, Path]:
    """Write ``model`` in each of ``forms`` (keys of :data:`ONNX_FORMS`) under ``folder`` as ``{name}.*.onnx``
    (``shortlist``: the head computes those token ids' logits only; the forms of :data:`SHORTLIST_FORMS` need it);
    returns the file of each form."""
    short = [form for form in forms if form in SHORTLIST_FORMS]
    if short:
        if shortlist is None:
            raise ValueError(f"{', '.join(short)}: a shortlisted head needs the shortlist")
        full = [form for form in forms if form not in SHORTLIST_FORMS]
        files = export_forms(model, folder, name, mask_token_id, full) if full else {}
        shortened = export_forms(
            model, folder, f"{name}.short", mask_token_id, [SHORTLIST_FORMS[f] for f in short], shortlist
        )
        files |= {form: shortened[SHORTLIST_FORMS[form]] for form in short}
        return {form: files[form] for form in forms}
    files = {}
    if "ort_fp32" in forms:
        files["ort_fp32"] = export_onnx(model, folder / f"{name}.onnx", mask_token_id, shortlist)
    if "ort_fused_skipln" in forms:
        target = folder / f"{name}.fused_skipln.onnx"
        files["ort_fused_skipln"] = export_fused_onnx(model, target, mask_token_id, True, shortlist).path
    if "ort_fused" in forms or any(form in INT8_FORMS for form in forms):
        fused = export_fused_onnx(model, folder / f"{name}.fused.onnx", mask_token_id, shortlist=shortlist).path
        files["ort_fused"] = fused
        for form in (form for form in forms if form in INT8_FORMS):
            suffix = form.removeprefix("ort_fused_")
            files[form] = quantize_int8(fused, folder / f"{name}.fused.{suffix}.onnx", INT8_FORMS[form])
    return {form: files[form] for form in forms}
