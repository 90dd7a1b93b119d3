"""Head importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?") and the choice of heads
to keep: the data-driven half of head pruning and of teacher-initialised students."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models import FFN_INIT, IGNORE_INDEX, STUDENT_INIT, FeedForward, MultiHeadAttention, SimplifiedBert
from models.methods import IMPORTANCE
from utils.device import to_device
from utils.errors import UserError


def head_importance(
    model: SimplifiedBert, loader, device: torch.device, layers: list[int] | None = None
) -> torch.Tensor:
    """Accumulated |d MLM loss / d gate| of a per-head gate (all ones) over ``loader``'s masked tokens,
    [layers, heads] for ``layers`` (default: all), each layer's row L2-normalised as in Michel et al. so
    that layers can be ranked together. A head whose removal would not change the loss scores ~0."""
    layers = list(range(len(model.layers))) if layers is None else layers
    gates = {
        index: torch.ones(model.layers[index].attention.heads, device=device, requires_grad=True) for index in layers
    }
    importance = {index: torch.zeros_like(gate) for index, gate in gates.items()}
    try:
        for index, gate in gates.items():
            model.layers[index].attention.head_gate = gate
        for batch in tqdm(loader, desc="head importance", leave=False):
            batch = to_device(batch, device)
            targets = batch["labels"][batch["labels"] != IGNORE_INDEX]
            F.cross_entropy(model(**batch).float(), targets).backward()
            for index, gate in gates.items():
                importance[index] += gate.grad.abs()
                gate.grad = None
    finally:
        for index in gates:
            model.layers[index].attention.head_gate = None
    table = torch.stack([importance[index] for index in layers]).detach().cpu()
    return table / table.norm(dim=1, keepdim=True).clamp_min(1e-12)


def heads_to_keep(importance: torch.Tensor, heads: int, per_layer: bool) -> list[list[int]]:
    """The ``heads`` most important heads of every layer (``per_layer``), or the ``rows x heads`` most
    important overall with at least one per layer; each list in the teacher's head order."""
    rows, columns = importance.shape
    if heads > columns:
        raise ValueError(f"cannot keep {heads} of {columns} heads")
    if per_layer:
        return [sorted(row.argsort(descending=True)[:heads].tolist()) for row in importance]
    keep = [{int(row.argmax())} for row in importance]  # every layer keeps its best head
    ranked = sorted(((float(importance[r, c]), r, c) for r in range(rows) for c in range(columns)), reverse=True)
    for _, row, column in ranked:
        if sum(map(len, keep)) == rows * heads:
            break
        keep[row].add(column)
    return [sorted(layer) for layer in keep]


def initial_student(
    teacher: SimplifiedBert, block: int, heads: int, d_k: int, dropout: float, init: str, loader, device: torch.device
) -> MultiHeadAttention:
    """The student attention of ``block`` before training, by the student init ``init`` (:data:`STUDENT_INIT`);
    a method that needs importance gets the block's ``heads`` most important teacher heads, ranked on
    ``loader``."""
    method = STUDENT_INIT[init]
    keep = None
    if IMPORTANCE in method.needs:
        available = teacher.layers[block].attention.heads
        if heads > available:
            raise UserError(f"--student_init {init}: --block_heads {heads} exceeds the teacher's {available} heads")
        keep = heads_to_keep(head_importance(teacher, loader, device, [block]), heads, per_layer=True)[0]
    try:
        return method.function(teacher, block, heads, d_k, dropout, keep)
    except ValueError as error:  # a shape the teacher cannot give
        raise UserError(f"--student_init {error}") from None


def neuron_importance(model: SimplifiedBert, loader, device: torch.device) -> list[torch.Tensor]:
    """Per layer [intermediate]: accumulated |d MLM loss / d gate| of a gate (all ones) on each feed-forward
    neuron's activation over ``loader``'s masked tokens, L2-normalised per layer (as for heads, so layers can be
    ranked together). A neuron whose removal would not change the loss scores ~0."""
    gates = [torch.ones(layer.ffn_in.out_features, device=device, requires_grad=True) for layer in model.layers]
    hooks = [
        layer.ffn_out.register_forward_pre_hook(lambda module, inputs, gate=gate: (inputs[0] * gate,))
        for layer, gate in zip(model.layers, gates, strict=True)
    ]
    importance = [torch.zeros_like(gate) for gate in gates]
    try:
        for batch in tqdm(loader, desc="neuron importance", leave=False):
            batch = to_device(batch, device)
            targets = batch["labels"][batch["labels"] != IGNORE_INDEX]
            F.cross_entropy(model(**batch).float(), targets).backward()
            for total, gate in zip(importance, gates, strict=True):
                total += gate.grad.abs()
                gate.grad = None
    finally:
        for hook in hooks:
            hook.remove()
    return [(total / total.norm().clamp_min(1e-12)).detach().cpu() for total in importance]


def neurons_to_keep(importance: list[torch.Tensor], width: int, per_layer: bool) -> list[list[int]]:
    """The ``width`` most important neurons of every layer (``per_layer``), or ``layers x width`` chosen across
    layers by importance with at least one per layer; each list sorted."""
    if any(width > len(row) for row in importance):
        raise ValueError(f"cannot keep {width} of {min(len(row) for row in importance)} neurons")
    if per_layer:
        return [sorted(row.argsort(descending=True)[:width].tolist()) for row in importance]
    keep = [{int(row.argmax())} for row in importance]
    ranked = sorted(((float(row[c]), r, c) for r, row in enumerate(importance) for c in range(len(row))), reverse=True)
    for _, layer, neuron in ranked:
        if sum(map(len, keep)) >= len(importance) * width:
            break
        keep[layer].add(neuron)
    return [sorted(layer) for layer in keep]


@torch.no_grad()
def feed_forward_statistics(
    model: SimplifiedBert, keep: list[list[int]], loader, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, over the real tokens of ``loader``: Σ [a;1][a;1]ᵀ [k+1, k+1] and Σ [a;1] yᵀ [k+1, hidden]
    (float64), ``a`` the activations of the neurons ``keep[layer]`` and ``y`` the layer's full feed-forward
    output: what :func:`models.reconstruct_feed_forward_output` solves. The inputs are the unpruned model's
    (each layer reconstructed on its own)."""
    sums = [None] * len(model.layers)
    real: dict[str, torch.Tensor] = {}

    def record(index: int):
        columns = torch.as_tensor(keep[index], device=device)

        def hook(module, inputs, output):
            tokens = real["mask"]
            kept = inputs[0][tokens][:, columns].double()
            augmented = torch.cat([kept, torch.ones(len(kept), 1, dtype=kept.dtype, device=device)], dim=1)
            gram, cross = augmented.T @ augmented, augmented.T @ output[tokens].double()
            previous = sums[index]
            sums[index] = (gram, cross) if previous is None else (previous[0] + gram, previous[1] + cross)

        return hook

    hooks = [layer.ffn_out.register_forward_hook(record(index)) for index, layer in enumerate(model.layers)]
    try:
        for batch in tqdm(loader, desc="calibration", leave=False):
            batch = to_device(batch, device)
            real["mask"] = batch["attention_mask"].bool()
            model.encode(batch["input_ids"], batch["attention_mask"])
    finally:
        for hook in hooks:
            hook.remove()
    return [(gram.cpu(), cross.cpu()) for gram, cross in sums]


def initial_feed_forward(
    teacher: SimplifiedBert, block: int, width: int, init: str, loader, device: torch.device
) -> FeedForward:
    """The student feed-forward of ``block`` before training, by the feed-forward init ``init``
    (:data:`FFN_INIT`); a method that needs importance gets the layer's ``width`` most important neurons,
    ranked on ``loader``."""
    method = FFN_INIT[init]
    available = teacher.layers[block].ffn_in.out_features
    keep = None
    if IMPORTANCE in method.needs:
        if width > available:
            raise UserError(f"--ffn_init {init}: --ffn_width {width} exceeds the teacher's {available} neurons")
        keep = neurons_to_keep([neuron_importance(teacher, loader, device)[block]], width, per_layer=True)[0]
    return method.function(teacher, block, width, keep)
