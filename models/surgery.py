"""Model surgery: derive simplified models from a teacher-shaped :class:`SimplifiedBert`.

Layer indices always refer to positions in the ``base`` model (for a model made with
``SimplifiedBert.from_teacher`` these are the teacher's layer numbers). Every function returns a new
model that shares the untouched modules with ``base``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from models.attention import MultiHeadAttention
from models.bert import SimplifiedBert
from models.layers import TransformerLayer, init_linear_weights


def assemble(
    base: SimplifiedBert,
    attentions: dict[int, MultiHeadAttention] | None = None,
    merged: dict[int, TransformerLayer] | None = None,
    dropped: set[int] | frozenset[int] = frozenset(),
) -> SimplifiedBert:
    """``base`` with ``attentions[i]`` in layer i, ``merged[i]`` in place of layers i and i+1, ``dropped`` removed."""
    attentions, merged = attentions or {}, merged or {}
    count = len(base.layers)
    for index in [*attentions, *dropped]:
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
            layers.append(layer.with_attention(attentions[index]) if index in attentions else layer)
        index += 1
    # new wrapper modules follow the base's mode: an assembled model of a frozen teacher is in eval mode
    return SimplifiedBert(base.config, base.embeddings, layers, base.mlm_head).train(base.training)


def student_attention(base: SimplifiedBert, heads: int, d_k: int, dropout: float) -> MultiHeadAttention:
    """A randomly initialised attention of the teacher's hidden size (BERT's N(0, 0.02) init)."""
    attention = MultiHeadAttention(base.config.hidden_size, heads, d_k, dropout)
    return init_linear_weights(attention, base.config.initializer_range)


def merged_layer(
    base: SimplifiedBert,
    first: int,
    heads: int,
    d_k: int,
    dropout: float,
    init: Literal["random", "first", "second", "average"] = "random",
) -> TransformerLayer:
    """One layer meant to replace ``base.layers[first]`` and ``base.layers[first + 1]``.

    Feed-forward as wide as the teacher's (4x hidden in BERT). ``init`` = ``first``/``second`` copies that
    teacher layer's norms and feed-forward, and its attention too when the shapes (heads and d_k) agree;
    ``average`` is training-free parameter merging: every weight the element-wise mean of the pair's
    (needs the teacher's attention shape).
    """
    if not 0 <= first < len(base.layers) - 1:
        raise IndexError(f"merging layers {first} and {first + 1}: needs 0 <= first < {len(base.layers) - 1}")
    config = base.config
    origin = {"kind": "merged", "teacher_layers": [first, first + 1]}
    layer = TransformerLayer.fresh(config, heads, d_k, dropout, config.intermediate_size, origin)
    if init == "random":
        return layer
    if init == "average":
        pair = (base.layers[first], base.layers[first + 1])
        if any((source.attention.heads, source.attention.d_k) != (heads, d_k) for source in pair):
            raise ValueError(f"averaging layers {first}, {first + 1} needs their attention shape, not {heads} x {d_k}")
        averaged = {key: (pair[0].state_dict()[key] + value) / 2 for key, value in pair[1].state_dict().items()}
        layer.load_state_dict(averaged)
        return layer
    source = base.layers[first if init == "first" else first + 1]
    names = ["attention_norm", "ffn_norm"]
    if source.ffn_in.out_features == layer.ffn_in.out_features:
        names += ["ffn_in", "ffn_out"]
    if (source.attention.heads, source.attention.d_k) == (heads, d_k):
        names.append("attention")
    for name in names:
        getattr(layer, name).load_state_dict(getattr(source, name).state_dict())
    return layer


def select_trainable(model: SimplifiedBert, feed_forward: bool = False) -> SimplifiedBert:
    """Freeze everything but what simplification introduced: student attentions and merged layers
    (and, with ``feed_forward``, every layer's feed-forward and LayerNorms). Embeddings and MLM head stay frozen."""
    model.requires_grad_(False)
    for layer in model.layers:
        kind = layer.origin["kind"]
        if kind == "merged":
            layer.requires_grad_(True)
        elif kind == "student_attention":
            layer.attention.requires_grad_(True)
        if feed_forward:
            for part in (layer.attention_norm, layer.ffn_in, layer.ffn_out, layer.ffn_norm):
                part.requires_grad_(True)
    return model


DROP_RULES = ("alternate", "top", "influence", "angular")


def layers_to_drop(rule: str, num_layers: int, count: int, similarity=None) -> list[int]:
    """The ``count`` layers a layer-drop rule removes from a ``num_layers``-layer model.

    - ``alternate``: every second layer, 1, 3, 5, ... (the seed's baseline);
    - ``top``: the last ``count`` layers (Sajjad et al., "Poor Man's BERT");
    - ``influence``: ShortGPT's block influence, 1 - cos(input, output) of each layer: the least influential;
    - ``angular``: Gromov et al.: the ``count`` contiguous layers whose input and output are closest in
      angle (arccos of the cosine).

    ``similarity`` [L+1, L+1]: mean cosine similarity over real tokens between the hidden states entering
    layers i and j (index L = the output of the last layer); needed by ``influence`` and ``angular``.
    """
    if not 0 < count < num_layers:
        raise ValueError(f"dropping {count} of {num_layers} layers")
    if rule == "alternate":
        return list(range(1, num_layers, 2))[:count]
    if rule == "top":
        return list(range(num_layers - count, num_layers))
    if similarity is None:
        raise ValueError(f"--drop {rule} needs the hidden states' similarities")
    if rule == "influence":
        influence = [1 - float(similarity[layer, layer + 1]) for layer in range(num_layers)]
        return sorted(sorted(range(num_layers), key=lambda layer: influence[layer])[:count])
    if rule == "angular":
        distance = [math.acos(max(-1.0, min(1.0, float(similarity[start, start + count])))) / math.pi
                    for start in range(num_layers - count + 1)]  # fmt: skip
        start = min(range(len(distance)), key=lambda index: distance[index])
        return list(range(start, start + count))
    raise ValueError(f"unknown drop rule {rule!r} (expected one of {', '.join(DROP_RULES)})")


def _head_rows(attention: MultiHeadAttention, head: int) -> slice:
    return slice(head * attention.d_k, (head + 1) * attention.d_k)


@torch.no_grad()
def attention_of_heads(attention: MultiHeadAttention, keep: list[int], dropout: float) -> MultiHeadAttention:
    """A trainable attention holding copies of the heads ``keep`` of ``attention`` (same d_k): with every
    head kept it computes exactly what ``attention`` does; the output bias is kept whole."""
    student = MultiHeadAttention(attention.hidden, len(keep), attention.d_k, dropout)
    rows = torch.arange(attention.heads * attention.d_k).view(attention.heads, attention.d_k)[keep].flatten()
    for name in ("query", "key", "value"):
        source, target = getattr(attention, name), getattr(student, name)
        target.weight.copy_(source.weight[rows])
        target.bias.copy_(source.bias[rows])
    student.output.weight.copy_(attention.output.weight[:, rows])
    student.output.bias.copy_(attention.output.bias)
    return student


def _augmented(linear: torch.nn.Linear, rows: slice) -> torch.Tensor:
    """[weight | bias] of some output rows: acting on [x; 1] it gives weight x + bias. [rows, in + 1]"""
    return torch.cat([linear.weight[rows], linear.bias[rows, None]], dim=1).double()


@torch.no_grad()
def attention_low_rank(attention: MultiHeadAttention, keep: list[int], d_k: int, dropout: float) -> MultiHeadAttention:
    """A student with the heads ``keep`` of ``attention`` at head size ``d_k`` <= the teacher's, initialised
    from the best rank-``d_k`` approximation (truncated SVD) of each head's query-key product ``A_q^T A_k``
    (scaled for the student's 1/sqrt(d_k)) and value-output product ``W_o A_v`` (biases folded in as an extra
    input of 1). With ``d_k`` equal to the teacher's it reproduces the kept heads exactly."""
    if d_k > attention.d_k:
        raise ValueError(f"an SVD initialisation needs d_k <= the teacher's {attention.d_k}, got {d_k}")
    hidden = attention.hidden
    student = MultiHeadAttention(hidden, len(keep), d_k, dropout)
    scale = math.sqrt(math.sqrt(d_k / attention.d_k))  # split between query and key
    for index, head in enumerate(keep):
        rows, target = _head_rows(attention, head), slice(index * d_k, (index + 1) * d_k)
        u, s, vh = torch.linalg.svd(_augmented(attention.query, rows).T @ _augmented(attention.key, rows))
        root = (s[:d_k].sqrt() * scale)[None, :]
        query, key = (u[:, :d_k] * root).T, (vh[:d_k].T * root).T  # [d_k, hidden + 1] each
        u, s, vh = torch.linalg.svd(attention.output.weight[:, rows].double() @ _augmented(attention.value, rows))
        root = s[:d_k].sqrt()
        output, value = u[:, :d_k] * root[None, :], vh[:d_k] * root[:, None]  # [hidden, d_k], [d_k, hidden + 1]
        for linear, augmented in ((student.query, query), (student.key, key), (student.value, value)):
            linear.weight[target] = augmented[:, :hidden].float()
            linear.bias[target] = augmented[:, hidden].float()
        student.output.weight[:, target] = output.float()
    student.output.bias.copy_(attention.output.bias)
    return student
