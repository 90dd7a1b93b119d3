"""Learned structured masks (CoFi: Xia, Zhong and Chen, ACL 2022): a hard-concrete gate (Louizos, Welling and
Kingma, 2018) on every attention head and every feed-forward neuron of a model, whose expected size is
differentiable, so that a Lagrangian can hold it at a target share of the teacher's FLOPs while the model is
distilled; and the surgery that keeps what the final gates keep.

Left out of CoFi's masks here: the hidden dimension and whole sub-layers (a sub-layer whose every head or neuron
is closed keeps one: the models of this repository have no empty attention or feed-forward).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.bert import SimplifiedBert
from models.cost import flops_per_token
from models.feed_forward import FeedForward
from models.methods import attention_of_heads, feed_forward_of_neurons
from models.surgery import assemble

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1  # the concrete's temperature and its stretch to (GAMMA, ZETA) (Louizos et al.)
OPEN_AT_START = 3.0  # log alpha at the start: every gate's deterministic value clamps to 1, P(open) 0.98


class HardConcrete(nn.Module):
    """``count`` gates in [0, 1]: in training each a fresh sample of the stretched, clipped concrete distribution of
    its ``log_alpha``; in evaluation its deterministic value, clamp(sigmoid(log_alpha) (ZETA - GAMMA) + GAMMA)."""

    def __init__(self, count: int):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((count,), OPEN_AT_START))

    def forward(self) -> torch.Tensor:
        """The gates, [count]."""
        if self.training:
            uniform = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            concrete = torch.sigmoid((uniform.log() - (-uniform).log1p() + self.log_alpha) / BETA)
        else:
            concrete = torch.sigmoid(self.log_alpha)
        return (concrete * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def open_probability(self) -> torch.Tensor:
        """P(gate > 0) of each gate, [count]: their sum is the expected number of units kept (the L0 norm)."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA))


class LearnedMasks(nn.Module):
    """A gate on every head (``heads[l]``, [heads of layer l]) and every feed-forward neuron (``neurons[l]``) of a
    model with ``layers`` [(heads, neurons) of each layer] and heads of ``d_k``, hidden ``hidden``."""

    def __init__(self, layers: list[tuple[int, int]], hidden: int, d_k: int):
        super().__init__()
        self.hidden, self.d_k = hidden, d_k
        self.heads = nn.ModuleList(HardConcrete(heads) for heads, _ in layers)
        self.neurons = nn.ModuleList(HardConcrete(neurons) for _, neurons in layers)

    @classmethod
    def of(cls, model: SimplifiedBert) -> LearnedMasks:
        shapes = [(layer.attention.heads, layer.ffn_in.out_features) for layer in model.layers]
        return cls(shapes, model.layers[0].attention.hidden, model.layers[0].attention.d_k)

    def install(self, model: SimplifiedBert):
        """Gate ``model``'s heads and neurons with these masks from now on (a fresh sample each forward in training);
        returns the function that takes them off again."""
        hooks = []
        for layer, heads, neurons in zip(model.layers, self.heads, self.neurons, strict=True):

            def gate_heads(module, inputs, heads=heads):
                module.head_gate = heads()

            hooks.append(layer.attention.register_forward_pre_hook(gate_heads))
            hooks.append(layer.ffn_out.register_forward_pre_hook(lambda module, inputs, g=neurons: (inputs[0] * g(),)))

        def remove() -> None:
            for hook in hooks:
                hook.remove()
            for layer in model.layers:
                layer.attention.head_gate = None

        return remove

    def expected_flops(self, seq_len: int) -> torch.Tensor:
        """The encoder's expected forward FLOPs per token with the gates' expected units (differentiable, scalar):
        a layer's FLOPs are linear in its heads and neurons (:func:`models.cost.flops_per_token`)."""
        return sum(
            flops_per_token(
                self.hidden, heads.open_probability().sum(), self.d_k, neurons.open_probability().sum(), seq_len
            )  # fmt: skip
            for heads, neurons in zip(self.heads, self.neurons, strict=True)
        )

    @torch.no_grad()
    def kept(self, flops: float, seq_len: int) -> list[tuple[list[int], list[int]]]:
        """The heads and neurons of each layer to keep for at most ``flops`` per token: every unit ranked by its
        ``log_alpha`` across the model (CoFi keeps the most open), taken while the model's FLOPs stay within, so the
        model lands at its budget even where training left the masks' expected size off it (a closed unit taken
        then starts at 0, its gate's value, and is trained by the healing); each layer keeps at least its most open
        head and neuron."""
        units = [(float(alpha), layer, "heads", unit) for layer, gates in enumerate(self.heads)
                 for unit, alpha in enumerate(gates.log_alpha)]  # fmt: skip
        units += [(float(alpha), layer, "neurons", unit) for layer, gates in enumerate(self.neurons)
                  for unit, alpha in enumerate(gates.log_alpha)]  # fmt: skip
        units.sort(key=lambda item: -item[0])
        kept = {(layer, kind): [] for layer in range(len(self.heads)) for kind in ("heads", "neurons")}
        for _, layer, kind, unit in units:  # first the most open head and neuron of every layer
            if not kept[layer, kind]:
                kept[layer, kind].append(unit)
        head_cost = flops_per_token(self.hidden, 1, self.d_k, 0, seq_len)
        neuron_cost = flops_per_token(self.hidden, 0, self.d_k, 1, seq_len)
        spent = len(self.heads) * (head_cost + neuron_cost)
        for _, layer, kind, unit in units:
            cost = head_cost if kind == "heads" else neuron_cost
            if unit not in kept[layer, kind] and spent + cost <= flops:
                kept[layer, kind].append(unit)
                spent += cost
        return [(sorted(kept[layer, "heads"]), sorted(kept[layer, "neurons"])) for layer in range(len(self.heads))]

    @torch.no_grad()
    def prune(self, model: SimplifiedBert, flops: float, seq_len: int) -> SimplifiedBert:
        """A new model of ``model``'s kept heads and neurons (:meth:`kept`), each scaled by its gate's deterministic
        value (folded into the output projection's columns); the gates' hooks are not on it."""
        attentions, feed_forwards = {}, {}
        for index, (layer, (heads, neurons)) in enumerate(zip(model.layers, self.kept(flops, seq_len), strict=True)):
            head_gates, neuron_gates = self.heads[index].eval()(), self.neurons[index].eval()()
            attentions[index] = attention_of_heads(layer.attention, heads, layer.attention.dropout)
            scale = head_gates[heads].repeat_interleave(self.d_k).to(attentions[index].output.weight)
            attentions[index].output.weight.mul_(scale)
            feed_forwards[index] = FeedForward.of_layer(feed_forward_of_neurons(layer, neurons))
            feed_forwards[index].ffn_out.weight.mul_(neuron_gates[neurons].to(feed_forwards[index].ffn_out.weight))
        return assemble(model, attentions=attentions, feed_forwards=feed_forwards)
