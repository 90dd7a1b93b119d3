"""The method registry: every way sitra (or the field it compares against) starts or cuts a module is one
function with one registration here. A :class:`Family` is one choice a flag makes (``--drop``,
``--student_init``, ``--merge_init``); each registered :class:`Method` says what it needs from the caller
(``similarity``: the hidden states' cosine similarities; ``importance``: the heads to keep, ranked by
importance; ``teacher_shape``: the teacher's head count and size) and what it produces (the family's).

The flag's choices and help, the report's labels and the "every registered method" tests derive from these
entries, so adding a method is: one function, one registration, its known-answer test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from models.attention import MultiHeadAttention
from models.bert import SimplifiedBert
from models.feed_forward import FeedForward
from models.layers import TransformerLayer, init_linear_weights

SIMILARITY, IMPORTANCE, TEACHER_SHAPE = "similarity", "importance", "teacher_shape"


@dataclass(frozen=True)
class Method:
    """One registered method: its flag value, the function, what it needs and a one-line summary."""

    name: str
    function: Callable
    needs: tuple[str, ...]
    summary: str


class Family:
    """The methods one flag chooses between, in registration order."""

    def __init__(self, flag: str, produces: str, label: str):
        self.flag, self.produces, self.label = flag, produces, label
        self.methods: dict[str, Method] = {}

    def register(self, name: str, summary: str, needs: tuple[str, ...] = ()) -> Callable:
        def decorate(function: Callable) -> Callable:
            if name in self.methods:
                raise ValueError(f"--{self.flag} {name} is registered twice")
            self.methods[name] = Method(name, function, needs, summary)
            return function

        return decorate

    def __getitem__(self, name: str) -> Method:
        if name not in self.methods:
            raise ValueError(f"unknown --{self.flag} {name!r} (expected one of {', '.join(self.methods)})")
        return self.methods[name]

    def names(self) -> list[str]:
        return list(self.methods)

    def help(self, lead: str) -> str:
        """``lead`` and one clause per method, for the flag's --help."""
        return lead + " " + "; ".join(f"{method.name}: {method.summary}" for method in self.methods.values()) + "."


# -- layer drop: which ``count`` of ``num_layers`` layers to remove --------------------------------------------
# ``similarity`` [L+1, L+1]: mean cosine similarity over real tokens between the hidden states entering layers i
# and j (index L = the output of the last layer), see utils.metrics.hidden_state_similarity.
DROP = Family("drop", produces="the teacher layers to drop, sorted", label="layer drop")


@DROP.register("alternate", "every second layer, 1, 3, 5, ... (the original repository's baseline)")
def drop_alternate(num_layers: int, count: int, similarity=None) -> list[int]:
    return list(range(1, num_layers, 2))[:count]


@DROP.register("top", "the last layers (Sajjad et al., Poor Man's BERT)")
def drop_top(num_layers: int, count: int, similarity=None) -> list[int]:
    return list(range(num_layers - count, num_layers))


@DROP.register("symmetric", "the middle layers, keeping the bottom and top ones (Sajjad et al.)")
def drop_symmetric(num_layers: int, count: int, similarity=None) -> list[int]:
    start = (num_layers - count) // 2
    return list(range(start, start + count))


@DROP.register("influence", "the least influential, 1 - cos(input, output) of each layer (ShortGPT)", (SIMILARITY,))
def drop_least_influential(num_layers: int, count: int, similarity=None) -> list[int]:
    influence = [1 - float(similarity[layer, layer + 1]) for layer in range(num_layers)]
    return sorted(sorted(range(num_layers), key=lambda layer: influence[layer])[:count])


@DROP.register(
    "angular", "the contiguous block whose input and output are closest in angle (Gromov et al.)", (SIMILARITY,)
)
def drop_angular(num_layers: int, count: int, similarity=None) -> list[int]:
    distance = [math.acos(max(-1.0, min(1.0, float(similarity[start, start + count])))) / math.pi
                for start in range(num_layers - count + 1)]  # fmt: skip
    start = min(range(len(distance)), key=lambda index: distance[index])
    return list(range(start, start + count))


def layers_to_drop(rule: str, num_layers: int, count: int, similarity=None) -> list[int]:
    """The ``count`` layers the drop rule ``rule`` removes from a ``num_layers``-layer model."""
    method = DROP[rule]
    if not 0 < count < num_layers:
        raise ValueError(f"dropping {count} of {num_layers} layers")
    if SIMILARITY in method.needs and similarity is None:
        raise ValueError(f"--drop {rule} needs the hidden states' similarities")
    return method.function(num_layers, count, similarity)


# -- student attention inits: the student of layer ``block`` before training -----------------------------------
# ``keep``: the ``heads`` teacher heads to start from, most important first or in the teacher's order (given when
# the method needs importance). A method whose shape the teacher cannot give raises ValueError naming the flag.
STUDENT_INIT = Family("student_init", produces="a student attention", label="retrained attention")


def student_attention(base: SimplifiedBert, heads: int, d_k: int, dropout: float) -> MultiHeadAttention:
    """A randomly initialised attention of the teacher's hidden size (BERT's N(0, 0.02) init)."""
    attention = MultiHeadAttention(base.config.hidden_size, heads, d_k, dropout)
    return init_linear_weights(attention, base.config.initializer_range)


@STUDENT_INIT.register("random", "random weights (BERT's init; the original repository's)")
def init_random(base: SimplifiedBert, block: int, heads: int, d_k: int, dropout: float, keep=None):
    return student_attention(base, heads, d_k, dropout)


@STUDENT_INIT.register(
    "heads", "copies of the block's most important teacher heads (needs the teacher's d_k)", (IMPORTANCE,)
)
def init_heads(base: SimplifiedBert, block: int, heads: int, d_k: int, dropout: float, keep=None):
    attention = base.layers[block].attention
    if d_k != attention.d_k:
        raise ValueError(f"heads copies heads of size {attention.d_k}: use --block_d_k {attention.d_k} or svd")
    return attention_of_heads(attention, keep, dropout)


@STUDENT_INIT.register(
    "svd", "those heads at --block_d_k from a truncated SVD of their query-key and value-output products",
    (IMPORTANCE,),
)  # fmt: skip
def init_svd(base: SimplifiedBert, block: int, heads: int, d_k: int, dropout: float, keep=None):
    attention = base.layers[block].attention
    if d_k > attention.d_k:
        raise ValueError(f"svd: --block_d_k {d_k} exceeds the teacher's head size {attention.d_k}")
    return attention_low_rank(attention, keep, d_k, dropout)


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


def _head_rows(attention: MultiHeadAttention, head: int) -> slice:
    return slice(head * attention.d_k, (head + 1) * attention.d_k)


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


# -- merge inits: the layer replacing ``first`` and ``first + 1`` before training -------------------------------
# Each fills ``layer`` (a fresh TransformerLayer of the asked shape, feed-forward as wide as the teacher's) from
# the pair ``base.layers[first]``, ``base.layers[first + 1]``.
MERGE_INIT = Family("merge_init", produces="a merged layer", label="merged layers")


@MERGE_INIT.register("random", "random weights (the original repository's)")
def merge_random(base: SimplifiedBert, first: int, layer: TransformerLayer) -> None:
    pass


def _copy_layer(source: TransformerLayer, layer: TransformerLayer) -> None:
    """Norms and feed-forward of ``source``, and its attention when the shapes (heads and d_k) agree."""
    names = ["attention_norm", "ffn_norm"]
    if source.ffn_in.out_features == layer.ffn_in.out_features:
        names += ["ffn_in", "ffn_out"]
    if (source.attention.heads, source.attention.d_k) == (layer.attention.heads, layer.attention.d_k):
        names.append("attention")
    for name in names:
        getattr(layer, name).load_state_dict(getattr(source, name).state_dict())


@MERGE_INIT.register("first", "a copy of the pair's first layer (its attention when heads and d_k match)")
def merge_first(base: SimplifiedBert, first: int, layer: TransformerLayer) -> None:
    _copy_layer(base.layers[first], layer)


@MERGE_INIT.register("second", "a copy of the pair's second layer (its attention when heads and d_k match)")
def merge_second(base: SimplifiedBert, first: int, layer: TransformerLayer) -> None:
    _copy_layer(base.layers[first + 1], layer)


@MERGE_INIT.register(
    "average", "every parameter the mean of the pair's (training-free merging; needs the teacher's heads and d_k)",
    (TEACHER_SHAPE,),
)  # fmt: skip
def merge_average(base: SimplifiedBert, first: int, layer: TransformerLayer) -> None:
    pair = (base.layers[first], base.layers[first + 1])
    shape = (layer.attention.heads, layer.attention.d_k)
    if any((source.attention.heads, source.attention.d_k) != shape for source in pair):
        raise ValueError(
            f"averaging layers {first}, {first + 1} needs their attention shape, not {shape[0]} x {shape[1]}"
        )
    if any(source.ffn_in.out_features != layer.ffn_in.out_features for source in pair):
        raise ValueError(f"averaging layers {first}, {first + 1} needs their feed-forward width")
    layer.load_state_dict({key: (pair[0].state_dict()[key] + value) / 2 for key, value in pair[1].state_dict().items()})


def merged_layer(
    base: SimplifiedBert,
    first: int,
    heads: int,
    d_k: int,
    dropout: float,
    init: str = "random",
    intermediate_size: int | None = None,
) -> TransformerLayer:
    """One layer meant to replace ``base.layers[first]`` and ``base.layers[first + 1]``, started by the merge
    init ``init`` (:data:`MERGE_INIT`); feed-forward ``intermediate_size`` wide (default: the teacher's; a copy
    init copies the feed-forward only when the widths agree)."""
    if not 0 <= first < len(base.layers) - 1:
        raise IndexError(f"merging layers {first} and {first + 1}: needs 0 <= first < {len(base.layers) - 1}")
    method = MERGE_INIT[init]
    config = base.config
    origin = {"kind": "merged", "teacher_layers": [first, first + 1]}
    width = intermediate_size or config.intermediate_size
    layer = TransformerLayer.fresh(config, heads, d_k, dropout, width, origin)
    method.function(base, first, layer)
    return layer


# -- feed-forward student inits: the student feed-forward of layer ``block`` before training --------------------
# ``keep``: the ``width`` teacher neurons to start from (given when the method needs importance).
FFN_INIT = Family("ffn_init", produces="a student feed-forward", label="retrained feed-forward")


@FFN_INIT.register("random", "random weights (BERT's init)")
def ffn_random(base: SimplifiedBert, block: int, width: int, keep=None) -> FeedForward:
    layer = base.layers[block]
    student = FeedForward.fresh(base.config.hidden_size, width, layer.activation)
    return init_linear_weights(student, base.config.initializer_range)


@FFN_INIT.register(
    "neurons", "copies of the layer's most important teacher neurons (exact at full width)", (IMPORTANCE,)
)
def ffn_neurons(base: SimplifiedBert, block: int, width: int, keep=None) -> FeedForward:
    return FeedForward.of_layer(feed_forward_of_neurons(base.layers[block], keep))


# -- feed-forward neurons: a layer keeping some of its intermediate neurons --------------------------------------
@torch.no_grad()
def feed_forward_of_neurons(layer: TransformerLayer, keep: list[int]) -> TransformerLayer:
    """``layer`` keeping only the intermediate neurons ``keep``: their rows of the first feed-forward matrix and
    columns of the second are copied, attention and norms shared; with every neuron kept it computes exactly
    what ``layer`` does."""
    index = torch.as_tensor(sorted(keep), dtype=torch.long)
    ffn_in = nn.Linear(layer.ffn_in.in_features, len(index)).to(layer.ffn_in.weight)
    ffn_out = nn.Linear(len(index), layer.ffn_out.out_features).to(layer.ffn_out.weight)
    ffn_in.weight.copy_(layer.ffn_in.weight[index])
    ffn_in.bias.copy_(layer.ffn_in.bias[index])
    ffn_out.weight.copy_(layer.ffn_out.weight[:, index])
    ffn_out.bias.copy_(layer.ffn_out.bias)
    norms_and_attention = (layer.attention, layer.attention_norm)
    pruned = TransformerLayer(
        *norms_and_attention, ffn_in, ffn_out, layer.ffn_norm, layer.activation, layer.dropout.p, layer.origin
    )
    return pruned.train(layer.training)  # a pruned frozen teacher layer is in eval mode, as the layer was


def pruned_modules(
    base: SimplifiedBert, heads: dict[int, list[int]] | None = None, neurons: dict[int, list[int]] | None = None
) -> tuple[dict[int, MultiHeadAttention], dict[int, FeedForward]]:
    """Head and neuron pruning of ``base``'s layers, as :func:`models.assemble` takes it: the attention of layer i
    keeping its heads ``heads[i]`` and the feed-forward keeping its intermediate neurons ``neurons[i]``."""
    attentions = {
        index: attention_of_heads(base.layers[index].attention, keep, base.layers[index].attention.dropout)
        for index, keep in (heads or {}).items()
    }
    feed_forwards = {
        index: FeedForward.of_layer(feed_forward_of_neurons(base.layers[index], keep))
        for index, keep in (neurons or {}).items()
    }
    return attentions, feed_forwards


@torch.no_grad()
def reconstruct_feed_forward_output(layer: TransformerLayer, gram: torch.Tensor, cross: torch.Tensor) -> None:
    """Least-squares reconstruction of a pruned layer's second feed-forward matrix (Kwon et al. 2022): the
    weights and bias that best map the kept neurons' activations ``a`` to the full layer's feed-forward output
    ``y`` over calibration tokens, from the sums ``gram`` = Σ [a;1][a;1]ᵀ [k+1, k+1] and ``cross`` = Σ [a;1] yᵀ
    [k+1, hidden] (float64). A ridge of 1e-6 of the mean diagonal keeps a rank-deficient system solvable."""
    ridge = 1e-6 * gram.diagonal().mean().clamp_min(1e-12)
    solution = torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype), cross)  # [k+1, hidden]
    set_output_projection(layer, solution)


@torch.no_grad()
def output_projection(layer: TransformerLayer) -> torch.Tensor:
    """A layer's second feed-forward matrix and bias stacked as one least-squares unknown: [k+1, hidden] float64
    (``[a;1]ᵀ W`` is the feed-forward output of the activations ``a``)."""
    return torch.cat([layer.ffn_out.weight.T, layer.ffn_out.bias[None]]).double()


@torch.no_grad()
def set_output_projection(layer: TransformerLayer, solution: torch.Tensor) -> None:
    """Write ``solution`` [k+1, hidden] (:func:`output_projection`'s layout) into the layer."""
    layer.ffn_out.weight.copy_(solution[:-1].T.to(layer.ffn_out.weight))
    layer.ffn_out.bias.copy_(solution[-1].to(layer.ffn_out.bias))


def ridge_toward(gram: torch.Tensor, cross: torch.Tensor, prior: torch.Tensor, strength: float) -> torch.Tensor:
    """argmin_W Σ ‖[a;1]ᵀ W − y‖² + λ ‖W − prior‖², λ = ``strength`` × the mean diagonal of ``gram``: least
    squares (λ → 0) drawn toward ``prior`` [k+1, hidden], which it becomes as λ → ∞. ``gram`` and ``cross`` as
    in :func:`reconstruct_feed_forward_output`."""
    ridge = strength * gram.diagonal().mean().clamp_min(1e-12)
    return torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype), cross + ridge * prior)


def validated_ridge(
    prior: torch.Tensor, fit: tuple, strengths: tuple[float, ...], held_out_error: Callable[[torch.Tensor], float]
) -> tuple[torch.Tensor, float | str, dict[str, float]]:
    """The output projection a held-out check prefers: ``prior`` [k+1, hidden] itself ("plain") or
    :func:`ridge_toward` it at each of ``strengths``, fitted on the sums ``fit`` = (gram, cross) and scored by
    ``held_out_error`` (a solution -> its error on held-out tokens). Returns the chosen solution, its key and
    every choice's error (keys ``str(strength)`` and ``"plain"``; ties go to ``prior``)."""
    candidates = {"plain": prior} | {strength: ridge_toward(*fit, prior, strength) for strength in strengths}
    errors = {key: held_out_error(solution) for key, solution in candidates.items()}
    best = min(errors, key=errors.get)
    return candidates[best], best, {str(key): error for key, error in errors.items()}


@torch.no_grad()
def normalized_output_error(
    layer: TransformerLayer, solution: torch.Tensor, hidden: torch.Tensor, target: torch.Tensor
) -> float:
    """Σ ‖LN(x + [a;1]ᵀ W) − t‖² / Σ ‖t‖² over tokens: ``hidden`` [n, H] the inputs ``x`` of the layer's
    feed-forward, ``a`` its activations there, ``W`` = ``solution`` [k+1, H], LN the layer's ``ffn_norm`` and
    ``target`` [n, H] what the full layer gives (the next layer's input). Unlike the feed-forward output's own
    squared error, a token whose output is a thousand times larger counts no more than another after the norm."""
    activations = layer.activation(layer.ffn_in(hidden))  # [n, k]
    output = activations @ solution[:-1].to(hidden) + solution[-1].to(hidden)  # [n, H]
    return float((layer.ffn_norm(hidden + output) - target).double().pow(2).sum() / target.double().pow(2).sum())
