"""Analytic size and compute of a :class:`SimplifiedBert` (no measurement; see utils/benchmark.py)."""

from __future__ import annotations

from models.bert import SimplifiedBert
from models.layers import TransformerLayer


def parameter_count(module) -> int:
    """Distinct parameters (shared and tied tensors counted once)."""
    return sum(parameter.numel() for parameter in module.parameters())


def flops_per_token(hidden: int, heads: int, d_k: int, ffn_width: int, seq_len: int) -> int:
    """Forward FLOPs (2 per multiply-add) of one layer of this shape per token of a ``seq_len``-token sequence;
    ``heads`` 0 is a layer without attention, ``ffn_width`` 0 one without feed-forward."""
    inner = heads * d_k
    projections = 2 * hidden * 3 * inner + 2 * inner * hidden
    scores_and_mixing = 2 * 2 * seq_len * inner  # Q K^T and probs V
    feed_forward = 2 * 2 * hidden * ffn_width
    return projections + scores_and_mixing + feed_forward


def layer_flops_per_token(layer: TransformerLayer, seq_len: int) -> int:
    """:func:`flops_per_token` of a built layer."""
    attention = layer.attention
    return flops_per_token(attention.hidden, attention.heads, attention.d_k, layer.ffn_in.out_features, seq_len)


WIDTH_MULTIPLE = 64  # feed-forward widths are multiples of this (whole tiles for the matrix kernels), or of an
# eighth of the teacher's width when that is smaller (a tiny test teacher)


def width_for_budget(
    budget: float,
    layers: int,
    hidden: int,
    heads: int,
    d_k: int,
    ffn_width: int,
    seq_len: int,
    kept_layers: int | None = None,
    kept_heads: int | None = None,
) -> int:
    """The feed-forward width that brings a model of ``kept_layers`` layers (default: all ``layers``) with
    ``kept_heads`` heads of ``d_k`` each (default: all ``heads``) to ``budget`` times the teacher's encoder FLOPs
    per token. The rounding rule: the exact width rounded to the nearest multiple of :data:`WIDTH_MULTIPLE`,
    at least one multiple, at most the teacher's ``ffn_width`` (so a budget the attention alone exceeds, or
    one above the model's whole cost, gives the nearest width that exists, and the caller checks the share)."""
    kept_layers = layers if kept_layers is None else kept_layers
    kept_heads = heads if kept_heads is None else kept_heads
    teacher = layers * flops_per_token(hidden, heads, d_k, ffn_width, seq_len)
    per_layer = budget * teacher / kept_layers - flops_per_token(hidden, kept_heads, d_k, 0, seq_len)
    exact, multiple = per_layer / (2 * 2 * hidden), min(WIDTH_MULTIPLE, max(1, ffn_width // 8))
    return int(min(ffn_width, max(multiple, multiple * round(exact / multiple))))


def model_cost(model: SimplifiedBert, seq_len: int) -> dict[str, int]:
    """Parameters, encoder FLOPs per token, and MLM-head FLOPs per predicted token."""
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    return {
        "parameters": parameter_count(model),
        "encoder_parameters": parameter_count(model.layers),
        "layers": len(model.layers),
        "flops_per_token": sum(layer_flops_per_token(layer, seq_len) for layer in model.layers),
        "head_flops_per_prediction": 2 * hidden * hidden + 2 * hidden * vocab,
    }
