"""One post-LayerNorm BERT layer, built from the teacher's modules or from scratch."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from models.attention import MultiHeadAttention


def init_linear_weights(module: nn.Module, std: float) -> nn.Module:
    """BERT's initialisation of every Linear in ``module``: weights N(0, std), biases 0."""
    for linear in module.modules():
        if isinstance(linear, nn.Linear):
            nn.init.normal_(linear.weight, std=std)
            nn.init.zeros_(linear.bias)
    return module


class TransformerLayer(nn.Module):
    """``x = LN(x + drop(attention(x))); x = LN(x + drop(W2 act(W1 x)))``, the layout of ``BertLayer``.

    ``origin`` records what the layer stands for, e.g. ``{"kind": "teacher", "teacher_layers": [3]}``,
    ``{"kind": "student_attention", ...}`` or ``{"kind": "merged", "teacher_layers": [2, 3]}``; it is
    what the saved-model spec is made of.
    """

    def __init__(
        self,
        attention: MultiHeadAttention,
        attention_norm: nn.LayerNorm,
        ffn_in: nn.Linear,
        ffn_out: nn.Linear,
        ffn_norm: nn.LayerNorm,
        activation,
        hidden_dropout: float,
        origin: dict,
    ):
        super().__init__()
        self.attention, self.attention_norm = attention, attention_norm
        self.ffn_in, self.ffn_out, self.ffn_norm = ffn_in, ffn_out, ffn_norm
        self.activation = activation
        self.dropout = nn.Dropout(hidden_dropout)
        self.origin = dict(origin)

    @classmethod
    def from_bert(cls, bert_layer: nn.Module, index: int) -> TransformerLayer:
        """A view of a Hugging Face ``BertLayer``: every parameter is shared with it."""
        return cls(
            attention=MultiHeadAttention.from_bert(bert_layer.attention),
            attention_norm=bert_layer.attention.output.LayerNorm,
            ffn_in=bert_layer.intermediate.dense,
            ffn_out=bert_layer.output.dense,
            ffn_norm=bert_layer.output.LayerNorm,
            activation=bert_layer.intermediate.intermediate_act_fn,
            hidden_dropout=bert_layer.output.dropout.p,
            origin={"kind": "teacher", "teacher_layers": [index]},
        )

    @classmethod
    def fresh(
        cls, config, heads: int, d_k: int, dropout: float, intermediate_size: int, origin: dict
    ) -> TransformerLayer:
        """A randomly initialised layer of the teacher's hidden size (BERT's N(0, 0.02) init)."""
        hidden = config.hidden_size
        layer = cls(
            attention=MultiHeadAttention(hidden, heads, d_k, dropout),
            attention_norm=nn.LayerNorm(hidden, eps=config.layer_norm_eps),
            ffn_in=nn.Linear(hidden, intermediate_size),
            ffn_out=nn.Linear(intermediate_size, hidden),
            ffn_norm=nn.LayerNorm(hidden, eps=config.layer_norm_eps),
            activation=ACT2FN[config.hidden_act],
            hidden_dropout=dropout,
            origin=origin,
        )
        return init_linear_weights(layer, config.initializer_range)

    def with_attention(self, attention: MultiHeadAttention) -> TransformerLayer:
        """This layer with its attention replaced; norms and feed-forward stay shared."""
        origin = {**self.origin, "kind": "student_attention"}
        return TransformerLayer(
            attention,
            self.attention_norm,
            self.ffn_in,
            self.ffn_out,
            self.ffn_norm,
            self.activation,
            self.dropout.p,
            origin,
        )

    def with_feed_forward(self, feed_forward) -> TransformerLayer:
        """This layer with its feed-forward replaced by ``feed_forward`` (a :class:`models.FeedForward`);
        attention and norms stay shared."""
        return TransformerLayer(
            self.attention,
            self.attention_norm,
            feed_forward.ffn_in,
            feed_forward.ffn_out,
            self.ffn_norm,
            feed_forward.activation,
            self.dropout.p,
            self.origin,
        ).train(self.training)

    @property
    def spec(self) -> dict:
        return {**self.origin, **self.attention.spec, "intermediate_size": self.ffn_in.out_features}

    def forward(self, hidden: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden: [B, T, H], key_padding_mask: [B, T] bool (True = real token) -> [B, T, H]"""
        return self.finish(hidden, self.attention(hidden, key_padding_mask)[0])

    def finish(self, hidden: torch.Tensor, attention_output: torch.Tensor) -> torch.Tensor:
        """The layer's output given its input and its attention's output (before residual and LayerNorm),
        both [B, T, H]: what a teacher pass that records the attention output continues with."""
        hidden = self.attention_norm(hidden + self.dropout(attention_output))
        ffn_output = self.ffn_out(self.activation(self.ffn_in(hidden)))
        return self.ffn_norm(hidden + self.dropout(ffn_output))
