"""Head and feed-forward neuron importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"), the
choice of units to keep, and the calibration sums of a least-squares reconstruction: the data-driven half of
head and neuron pruning and of teacher-initialised students."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models import FFN_INIT, IGNORE_INDEX, STUDENT_INIT, FeedForward, MultiHeadAttention, SimplifiedBert
from models.methods import IMPORTANCE
from utils.device import to_device
from utils.errors import UserError


def check_fewer_than_teacher(config, **kept: int | None) -> None:
    """What ``--block_heads`` and ``--ffn_width`` (keywords; None: not pruned) keep is fewer than the teacher's
    ``config`` has per layer: checked before its weights are loaded."""
    available = {
        "block_heads": (config.num_attention_heads, "heads"),
        "ffn_width": (config.intermediate_size, "neurons"),
    }
    for flag, value in kept.items():
        count, unit = available[flag]
        if value is not None and value >= count:
            raise UserError(f"--{flag} {value}: the teacher has {count} {unit}")


def _gate_gradients(model: SimplifiedBert, gates: dict[int, torch.Tensor], loader, device, desc: str) -> torch.Tensor:
    """Accumulated |d MLM loss / d gate| of every gate (all ones, installed on the model by the caller) over
    ``loader``'s masked tokens, [layers, units] in the order of ``gates``, each layer's row L2-normalised as in
    Michel et al. so that layers can be ranked together."""
    importance = {index: torch.zeros_like(gate) for index, gate in gates.items()}
    for batch in tqdm(loader, desc=desc, leave=False):
        batch = to_device(batch, device)
        targets = batch["labels"][batch["labels"] != IGNORE_INDEX]
        F.cross_entropy(model(**batch).float(), targets).backward()
        for index, gate in gates.items():
            importance[index] += gate.grad.abs()
            gate.grad = None
    table = torch.stack(list(importance.values())).detach().cpu()
    return table / table.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _every_layer(model: SimplifiedBert, layers: list[int] | None) -> list[int]:
    return list(range(len(model.layers))) if layers is None else layers


def head_importance(
    model: SimplifiedBert, loader, device: torch.device, layers: list[int] | None = None
) -> torch.Tensor:
    """Per-head importance, [layers, heads] for ``layers`` (default: all): a gate on each head's output
    (:func:`_gate_gradients`). A head whose removal would not change the loss scores ~0."""
    layers = _every_layer(model, layers)
    gates = {
        index: torch.ones(model.layers[index].attention.heads, device=device, requires_grad=True) for index in layers
    }
    try:
        for index, gate in gates.items():
            model.layers[index].attention.head_gate = gate
        return _gate_gradients(model, gates, loader, device, "head importance")
    finally:
        for index in gates:
            model.layers[index].attention.head_gate = None


def most_important(importance, count: int, per_layer: bool, unit: str = "heads") -> list[list[int]]:
    """The ``count`` most important units of every layer (``per_layer``), or ``layers x count`` chosen across
    layers with at least one per layer; ``importance``: one row of scores per layer; each list sorted."""
    rows = list(importance)
    if any(count > len(row) for row in rows):
        raise ValueError(f"cannot keep {count} of {min(len(row) for row in rows)} {unit}")
    if per_layer:
        return [sorted(row.argsort(descending=True)[:count].tolist()) for row in rows]
    keep = [{int(row.argmax())} for row in rows]  # every layer keeps its best unit
    ranked = sorted(((float(row[c]), r, c) for r, row in enumerate(rows) for c in range(len(row))), reverse=True)
    for _, layer, unit_index in ranked:
        if sum(map(len, keep)) >= len(rows) * count:
            break
        keep[layer].add(unit_index)
    return [sorted(layer) for layer in keep]


def heads_to_keep(importance: torch.Tensor, heads: int, per_layer: bool) -> list[list[int]]:
    """The heads to keep of every layer of ``importance`` [layers, heads] (:func:`most_important`)."""
    return most_important(importance, heads, per_layer, "heads")


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


def neuron_importance(
    model: SimplifiedBert, loader, device: torch.device, layers: list[int] | None = None
) -> torch.Tensor:
    """Per-neuron importance, [layers, intermediate] for ``layers`` (default: all): a gate on each feed-forward
    neuron's activation (:func:`_gate_gradients`). A neuron whose removal would not change the loss scores ~0."""
    layers = _every_layer(model, layers)
    gates = {
        index: torch.ones(model.layers[index].ffn_in.out_features, device=device, requires_grad=True)
        for index in layers
    }
    hooks = [
        model.layers[index].ffn_out.register_forward_pre_hook(lambda module, inputs, gate=gate: (inputs[0] * gate,))
        for index, gate in gates.items()
    ]
    try:
        return _gate_gradients(model, gates, loader, device, "neuron importance")
    finally:
        for hook in hooks:
            hook.remove()


def neurons_to_keep(importance, width: int, per_layer: bool) -> list[list[int]]:
    """The neurons to keep of every layer of ``importance`` (one row per layer; :func:`most_important`)."""
    return most_important(importance, width, per_layer, "neurons")


@torch.no_grad()
def feed_forward_statistics(
    model: SimplifiedBert, keep: dict[int, list[int]], loader, device: torch.device
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer of ``keep`` (only those are recorded), over the real tokens of ``loader``: Σ [a;1][a;1]ᵀ
    [k+1, k+1] and Σ [a;1] yᵀ [k+1, hidden] (float64), ``a`` the activations of the neurons ``keep[layer]`` and
    ``y`` the layer's full feed-forward output: what :func:`models.reconstruct_feed_forward_output` solves. The
    inputs are the unpruned model's (each layer reconstructed on its own)."""
    sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    real: dict[str, torch.Tensor] = {}

    def record(index: int):
        columns = torch.as_tensor(keep[index], device=device)

        def hook(module, inputs, output):
            tokens = real["mask"]
            kept = inputs[0][tokens][:, columns].double()
            augmented = torch.cat([kept, torch.ones(len(kept), 1, dtype=kept.dtype, device=device)], dim=1)
            gram, cross = augmented.T @ augmented, augmented.T @ output[tokens].double()
            previous = sums.get(index)
            sums[index] = (gram, cross) if previous is None else (previous[0] + gram, previous[1] + cross)

        return hook

    hooks = [model.layers[index].ffn_out.register_forward_hook(record(index)) for index in keep]
    try:
        for batch in tqdm(loader, desc="calibration", leave=False):
            batch = to_device(batch, device)
            real["mask"] = batch["attention_mask"].bool()
            model.encode(batch["input_ids"], batch["attention_mask"])
    finally:
        for hook in hooks:
            hook.remove()
    return {index: (gram.cpu(), cross.cpu()) for index, (gram, cross) in sums.items()}


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
        keep = neurons_to_keep(neuron_importance(teacher, loader, device, [block]), width, per_layer=True)[0]
    return method.function(teacher, block, width, keep)
