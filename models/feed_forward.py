"""A layer's feed-forward sub-block on its own (dense -> activation -> dense, before residual + LayerNorm): what a
feed-forward student is, and what :meth:`models.layers.TransformerLayer.with_feed_forward` puts into a layer."""

from __future__ import annotations

import torch
from torch import nn


class FeedForward(nn.Module):
    """``W2 act(W1 x)`` of width ``intermediate_size``; x, output: [..., hidden]."""

    def __init__(self, ffn_in: nn.Linear, ffn_out: nn.Linear, activation: nn.Module):
        super().__init__()
        self.ffn_in, self.ffn_out, self.activation = ffn_in, ffn_out, activation

    @classmethod
    def fresh(cls, hidden: int, intermediate_size: int, activation: nn.Module) -> FeedForward:
        """New (untrained) dense layers of width ``intermediate_size``."""
        return cls(nn.Linear(hidden, intermediate_size), nn.Linear(intermediate_size, hidden), activation)

    @classmethod
    def of_layer(cls, layer) -> FeedForward:
        """A view of ``layer``'s feed-forward: its parameters are shared."""
        return cls(layer.ffn_in, layer.ffn_out, layer.activation)

    @property
    def spec(self) -> dict:
        return {"intermediate_size": self.ffn_in.out_features}

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.ffn_out(self.activation(self.ffn_in(hidden)))
