"""Head and feed-forward neuron importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"), the
choice of units to keep, and the least-squares reconstructions of pruned feed-forwards (:data:`RECONSTRUCTION`):
the data-driven half of head and neuron pruning and of teacher-initialised students."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models import (
    FFN_INIT,
    IGNORE_INDEX,
    STUDENT_INIT,
    FeedForward,
    MultiHeadAttention,
    SimplifiedBert,
    TransformerLayer,
    normalized_output_error,
    output_projection,
    reconstruct_feed_forward_output,
    set_output_projection,
    validated_ridge,
)
from models.methods import IMPORTANCE, Family
from utils.data import eval_loader
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
def feed_forward_sums(
    model: SimplifiedBert, sources: dict[int, tuple[TransformerLayer, list[int]]], loader, device: torch.device
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer ``i`` of ``sources`` = {i: (full layer, kept neurons)}, over the real tokens of ``loader`` run
    through ``model``: with ``x`` the input of model layer i's feed-forward, ``a`` the full layer's activations
    of the kept neurons at ``x`` and ``y`` its whole feed-forward output at ``x``, the sums Σ [a;1][a;1]ᵀ
    [k+1, k+1] and Σ [a;1] yᵀ [k+1, hidden] (float64): what :func:`models.reconstruct_feed_forward_output` and
    :func:`models.ridge_toward` solve. ``model`` may be the full layers' own (the unpruned teacher's inputs) or a
    pruned one (its own inputs)."""
    sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    real: dict[str, torch.Tensor] = {}

    def record(index: int):
        full_layer, keep = sources[index]
        columns = torch.as_tensor(keep, device=device)

        def hook(module, inputs):
            ffn_in = full_layer.ffn_in  # by its weights: the full layer may be the hooked one
            hidden = inputs[0][real["mask"]]  # [n, hidden]
            activations = full_layer.activation(F.linear(hidden, ffn_in.weight, ffn_in.bias))  # [n, intermediate]
            output = full_layer.ffn_out(activations).double()  # [n, hidden]
            kept = activations[:, columns].double()
            augmented = torch.cat([kept, torch.ones(len(kept), 1, dtype=kept.dtype, device=device)], dim=1)
            found = (augmented.T @ augmented, augmented.T @ output)
            previous = sums.get(index)
            sums[index] = found if previous is None else tuple(a + b for a, b in zip(previous, found, strict=True))

        return hook

    hooks = [model.layers[index].ffn_in.register_forward_pre_hook(record(index)) for index in sources]
    try:
        for batch in tqdm(loader, desc="calibration", leave=False):
            batch = to_device(batch, device)
            real["mask"] = batch["attention_mask"].bool()
            model.encode(batch["input_ids"], batch["attention_mask"])
    finally:
        for hook in hooks:
            hook.remove()
    return {index: (gram.cpu(), cross.cpu()) for index, (gram, cross) in sums.items()}


# -- least-squares reconstruction of pruned feed-forwards: how a pruned layer's output projection is refitted --
# Each method takes the teacher, the pruned model (eval mode), ``pruned`` = {model layer: (teacher layer, kept
# neurons)}, the calibration and held-out loaders (training sentences) and the device; it refits the model's
# layers in place and returns what it chose per model layer (for the saved model's meta).
RECONSTRUCTION = Family(
    "reconstruct", produces="refitted output projections of pruned feed-forwards", label="least squares"
)
VALIDATED_STRENGTHS = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # ridge / mean diagonal of the gram; and "plain"
HELD_OUT = "held_out"  # a method that checks its fit on held-out sentences


def calibration_loaders(train, batch_size: int, sentences: int, reconstruction: str):
    """The loaders a reconstruction takes: the first ``sentences`` training sentences it fits on and, for a
    method that needs them, the next as many it checks its choices on (else None)."""
    if HELD_OUT not in RECONSTRUCTION[reconstruction].needs:
        return eval_loader(train, batch_size, sentences), None
    if len(train) < 2 * sentences:
        raise UserError(
            f"--calibration_sentences {sentences}: --reconstruct {reconstruction} fits on that many training "
            f"sentences and checks on as many more, but the training split has {len(train)}"
        )
    return eval_loader(train, batch_size, sentences), eval_loader(train, batch_size, sentences, skip=sentences)


@RECONSTRUCTION.register(
    "least_squares",
    "each layer's output projection refitted by least squares (ridge 1e-6) to the full feed-forward's output on "
    "the unpruned teacher's inputs over the calibration tokens, every layer on its own (Kwon et al. 2022)",
)
def reconstruct_least_squares(
    teacher: SimplifiedBert, model: SimplifiedBert, pruned: dict, calibration, held_out, device
) -> dict:
    sources = {source: (teacher.layers[source], keep) for source, keep in pruned.values()}
    sums = feed_forward_sums(teacher, sources, calibration, device)
    for index, (source, _) in pruned.items():
        reconstruct_feed_forward_output(model.layers[index], *sums[source])
    return {}


@RECONSTRUCTION.register(
    "validated",
    "layer by layer from the first, on the pruned model's own inputs: least squares drawn toward the plainly "
    "pruned weights by a ridge whose strength (the plainly pruned weights among the choices) gives the layer's "
    "normalised output closest to the full layer's on held-out training tokens (the feed-forward output's own "
    "squared error is ruled by a few tokens of huge activations, which the norm after it evens out)",
    needs=(HELD_OUT,),
)
def reconstruct_validated(
    teacher: SimplifiedBert, model: SimplifiedBert, pruned: dict, calibration, held_out, device
) -> dict:
    chosen = {}
    for index in sorted(pruned):  # a layer's inputs are those the layers before it, already refitted, give
        source, keep = pruned[index]
        fit = feed_forward_sums(model, {index: (teacher.layers[source], keep)}, calibration, device)[index]
        layer, full_layer = model.layers[index], teacher.layers[source]
        hidden = feed_forward_inputs(model, index, held_out, device)  # [n, H]
        with torch.no_grad():
            target = full_layer.ffn_norm(hidden + full_layer.ffn_out(full_layer.activation(full_layer.ffn_in(hidden))))
        held_out_error = partial(normalized_output_error, layer, hidden=hidden, target=target)
        plain = output_projection(layer).cpu()  # the sums are on the CPU
        solution, strength, errors = validated_ridge(plain, fit, VALIDATED_STRENGTHS, held_out_error)
        set_output_projection(layer, solution)
        # each choice's held-out error relative to Σ ‖t‖² (0: the full layer exactly; "plain": as pruned)
        chosen[index] = {"strength": strength, "held_out_errors": errors}
    return chosen


@torch.no_grad()
def feed_forward_inputs(model: SimplifiedBert, index: int, loader, device: torch.device) -> torch.Tensor:
    """The inputs of model layer ``index``'s feed-forward at the real tokens of ``loader``, [n, hidden]."""
    found, real = [], {}
    hook = model.layers[index].ffn_in.register_forward_pre_hook(
        lambda module, inputs: found.append(inputs[0][real["mask"]])
    )
    try:
        for batch in tqdm(loader, desc="held-out inputs", leave=False):
            batch = to_device(batch, device)
            real["mask"] = batch["attention_mask"].bool()
            model.encode(batch["input_ids"], batch["attention_mask"], stop=index + 1)
    finally:
        hook.remove()
    return torch.cat(found)


def reconstruction_of(value, where: str) -> str | None:
    """The reconstruction a recipe's or study's ``reconstruct`` names (``where``: which, for the error): ``true``
    is least squares (Kwon et al.; the committed studies' spelling), ``false`` or absent none, or a method's name."""
    if value is None or value is False:
        return None
    if value is True:
        return "least_squares"
    if value not in RECONSTRUCTION.names():
        expected = ", ".join(RECONSTRUCTION.names())
        raise UserError(f"{where}: reconstruct {value!r}: expected true, false or one of {expected}")
    return value


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
