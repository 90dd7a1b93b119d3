"""Analytic size and compute of a :class:`SimplifiedBert` (no measurement; see utils/benchmark.py)."""

from __future__ import annotations

from models.bert import SimplifiedBert
from models.layers import TransformerLayer


def parameter_count(module) -> int:
    """Distinct parameters (shared and tied tensors counted once)."""
    return sum(parameter.numel() for parameter in module.parameters())


def layer_flops_per_token(layer: TransformerLayer, seq_len: int) -> int:
    """Forward FLOPs (2 per multiply-add) of one layer per token of a ``seq_len``-token sequence."""
    attention = layer.attention
    hidden, inner = attention.hidden, attention.heads * attention.d_k
    projections = 2 * hidden * 3 * inner + 2 * inner * hidden
    scores_and_mixing = 2 * 2 * seq_len * inner  # Q K^T and probs V
    feed_forward = 2 * 2 * hidden * layer.ffn_in.out_features
    return projections + scores_and_mixing + feed_forward


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
