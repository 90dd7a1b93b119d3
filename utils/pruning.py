"""Head importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?") and the choice of heads
to keep: the data-driven half of head pruning and of teacher-initialised students."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models import IGNORE_INDEX, STUDENT_INIT, MultiHeadAttention, SimplifiedBert
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
