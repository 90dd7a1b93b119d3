"""Model surgery: derive simplified models from a teacher-shaped :class:`SimplifiedBert` (the modules it puts
in come from :mod:`models.methods`).

Layer indices always refer to positions in the ``base`` model (for a model made with
``SimplifiedBert.from_teacher`` these are the teacher's layer numbers). Every function returns a new
model that shares the untouched modules with ``base``.
"""

from __future__ import annotations

from models.attention import MultiHeadAttention
from models.bert import SimplifiedBert
from models.feed_forward import FeedForward
from models.layers import TransformerLayer


def assemble(
    base: SimplifiedBert,
    attentions: dict[int, MultiHeadAttention] | None = None,
    merged: dict[int, TransformerLayer] | None = None,
    dropped: set[int] | frozenset[int] = frozenset(),
    feed_forwards: dict[int, FeedForward] | None = None,
) -> SimplifiedBert:
    """``base`` with ``attentions[i]`` and ``feed_forwards[i]`` in layer i, ``merged[i]`` in place of layers i
    and i+1, ``dropped`` removed."""
    attentions, merged, feed_forwards = attentions or {}, merged or {}, feed_forwards or {}
    count = len(base.layers)
    for index in [*attentions, *dropped, *feed_forwards]:
        if not 0 <= index < count:
            raise IndexError(f"layer {index} is out of range 0..{count - 1}")
    for index in merged:
        if not 0 <= index < count - 1:
            raise IndexError(f"merging layers {index} and {index + 1}: needs 0 <= first < {count - 1}")
    layers, index = [], 0
    while index < count:
        if index in merged:
            layers.append(merged[index])
            index += 2
            continue
        if index not in dropped:
            layer = base.layers[index]
            layer = layer.with_attention(attentions[index]) if index in attentions else layer
            layers.append(layer.with_feed_forward(feed_forwards[index]) if index in feed_forwards else layer)
        index += 1
    # new wrapper modules follow the base's mode: an assembled model of a frozen teacher is in eval mode
    return SimplifiedBert(base.config, base.embeddings, layers, base.mlm_head).train(base.training)


def select_trainable(model: SimplifiedBert, feed_forward: bool = False, every_layer: bool = False) -> SimplifiedBert:
    """Freeze everything but what simplification introduced: student attentions, merged layers and pruned
    feed-forwards (and, with ``feed_forward``, every layer's feed-forward and LayerNorms; with ``every_layer``,
    every encoder layer whole, as layer drop and merged models are healed). Embeddings and MLM head stay frozen."""
    model.requires_grad_(False)
    if every_layer:
        model.layers.requires_grad_(True)
        return model
    for layer in model.layers:
        kind = layer.origin["kind"]
        if kind == "merged":
            layer.requires_grad_(True)
        elif kind == "student_attention":
            layer.attention.requires_grad_(True)
        if layer.ffn_in.out_features != model.config.intermediate_size:  # a pruned feed-forward is simplified too
            for part in (layer.ffn_in, layer.ffn_out):
                part.requires_grad_(True)
        if feed_forward:
            for part in (layer.attention_norm, layer.ffn_in, layer.ffn_out, layer.ffn_norm):
                part.requires_grad_(True)
    return model


def teacher_layer_map(model: SimplifiedBert) -> list[int]:
    """For each layer of ``model``, the teacher layer whose output it stands for: the last of the teacher layers it
    replaces (a merged pair's second, a kept or retrained layer's own), so that a layer-wise loss compares each
    layer with the teacher at the same depth across dropped and merged layers."""
    return [max(layer.origin["teacher_layers"]) for layer in model.layers]
