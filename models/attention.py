"""Multi-head self-attention whose head count and head size are free of the hidden size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Self-attention with ``heads`` heads of size ``d_k`` and an output projection back to ``hidden``.

    It stands for the teacher's self-attention *and* its output projection (``BertSelfOutput.dense``);
    the residual connection and LayerNorm after it belong to :class:`models.layers.TransformerLayer`.
    ``heads * d_k`` may be smaller (or larger) than ``hidden``.
    """

    def __init__(self, hidden: int, heads: int, d_k: int, dropout: float = 0.0):
        super().__init__()
        if heads <= 0 or d_k <= 0:
            raise ValueError(f"heads and d_k must be positive, got heads={heads}, d_k={d_k}")
        self.hidden, self.heads, self.d_k, self.dropout = hidden, heads, d_k, dropout
        self.query = nn.Linear(hidden, heads * d_k)
        self.key = nn.Linear(hidden, heads * d_k)
        self.value = nn.Linear(hidden, heads * d_k)
        self.output = nn.Linear(heads * d_k, hidden)
        self.head_gate: torch.Tensor | None = None  # [heads]: scales each head's output (head importance)

    @classmethod
    def from_bert(cls, bert_attention: nn.Module) -> MultiHeadAttention:
        """Wrap a Hugging Face ``BertAttention``: the projections are *shared* with it, not copied."""
        self_attention = bert_attention.self
        attention = cls(
            hidden=self_attention.query.in_features,
            heads=self_attention.num_attention_heads,
            d_k=self_attention.attention_head_size,
            dropout=self_attention.dropout.p,
        )
        attention.query, attention.key, attention.value = self_attention.query, self_attention.key, self_attention.value
        attention.output = bert_attention.output.dense
        return attention

    @property
    def spec(self) -> dict:
        return {"heads": self.heads, "d_k": self.d_k, "dropout": self.dropout}

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, heads*d_k] -> [B, heads, T, d_k]"""
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.d_k).transpose(1, 2)

    def forward(
        self, hidden: torch.Tensor, key_padding_mask: torch.Tensor | None = None, return_probs: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        hidden: [B, T, hidden]; key_padding_mask: [B, T] bool, True where a token is real.
        Returns the projected attention output [B, T, hidden] and, with ``return_probs``, the attention
        distribution over keys [B, heads, T, T] (before dropout).
        """
        query, key, value = (self._split_heads(proj(hidden)) for proj in (self.query, self.key, self.value))
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]  # [B, 1, 1, T]
        dropout = self.dropout if self.training else 0.0
        if return_probs:
            logits = query @ key.transpose(-1, -2) / self.d_k**0.5  # [B, heads, T, T]
            if mask is not None:
                logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
            probs = logits.softmax(dim=-1)
            context = F.dropout(probs, dropout, self.training) @ value
        else:
            probs = None
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout)
        if self.head_gate is not None:
            context = context * self.head_gate.view(1, -1, 1, 1)
        batch, _, length, _ = context.shape
        context = context.transpose(1, 2).reshape(batch, length, self.heads * self.d_k)
        return self.output(context), probs
