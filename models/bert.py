"""A BERT masked-LM as a plain list of layers, so that layers can be swapped, merged or dropped."""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM
from transformers.models.bert.modeling_bert import BertEmbeddings, BertOnlyMLMHead

from models.layers import TransformerLayer

IGNORE_INDEX = -100  # label value of tokens that are not predicted (the Hugging Face convention)


class SimplifiedBert(nn.Module):
    """Teacher embeddings -> ``layers`` (any :class:`TransformerLayer`) -> teacher MLM head.

    Built from a teacher with :meth:`from_teacher` it shares every parameter with the teacher and
    computes the same logits; :mod:`models.surgery` derives simplified models from it.
    """

    def __init__(self, config: BertConfig, embeddings: nn.Module, layers: list[TransformerLayer], mlm_head: nn.Module):
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        self.layers = nn.ModuleList(layers)
        self.mlm_head = mlm_head

    @classmethod
    def from_teacher(cls, teacher: BertForMaskedLM) -> SimplifiedBert:
        layers = [TransformerLayer.from_bert(layer, i) for i, layer in enumerate(teacher.bert.encoder.layer)]
        return cls(teacher.config, teacher.bert.embeddings, layers, teacher.cls)

    @classmethod
    def from_spec(cls, config: BertConfig, layer_specs: list[dict]) -> SimplifiedBert:
        """Fresh (untrained) modules laid out as ``layer_specs`` describe; load weights into it after."""
        layers = [
            TransformerLayer.fresh(
                config,
                spec["heads"],
                spec["d_k"],
                spec.get("dropout", config.attention_probs_dropout_prob),
                spec["intermediate_size"],
                origin={key: spec[key] for key in ("kind", "teacher_layers")},
            )
            for spec in layer_specs
        ]
        model = cls(config, BertEmbeddings(config), layers, BertOnlyMLMHead(config))
        predictions = model.mlm_head.predictions
        predictions.decoder.weight = model.embeddings.word_embeddings.weight  # tied, as in BERT
        predictions.decoder.bias = predictions.bias
        return model

    @property
    def spec(self) -> dict:
        """Everything needed to rebuild the architecture: the teacher's config and one entry per layer."""
        return {"teacher_config": self.config.to_dict(), "layers": [layer.spec for layer in self.layers]}

    def encode(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor,
        hidden: torch.Tensor | None = None,
        start: int = 0,
        stop: int | None = None,
    ) -> torch.Tensor:
        """Run ``layers[start:stop]``.

        input_ids: [B, T] (used when ``hidden`` is None: the embeddings are computed first);
        attention_mask: [B, T], 1 for real tokens; hidden: [B, T, H], the state entering ``layers[start]``.
        Returns the hidden state leaving ``layers[stop - 1]``, [B, T, H].
        """
        if hidden is None:
            hidden = self.embeddings(input_ids=input_ids)
        key_padding_mask = attention_mask.bool()
        for layer in self.layers[start:stop]:
            hidden = layer(hidden, key_padding_mask)
        return hidden

    def masked_logits(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits at the predicted positions only: hidden [B, T, H], labels [B, T] -> [N, V]."""
        return self.mlm_head(hidden[labels != IGNORE_INDEX])

    def trace(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every layer's output [B, T, H] and its attention distributions [B, heads, T, T], layer by layer
        (input_ids, attention_mask: [B, T]): what a layer-wise distillation compares."""
        hidden, key_padding_mask = self.embeddings(input_ids=input_ids), attention_mask.bool()
        hiddens, probs = [], []
        for layer in self.layers:
            attention_output, layer_probs = layer.attention(hidden, key_padding_mask, return_probs=True)
            hidden = layer.finish(hidden, attention_output)
            hiddens.append(hidden)
            probs.append(layer_probs)
        return hiddens, probs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, trace: bool = False):
        """Logits [N, V] at the N positions where ``labels`` [B, T] is not ``IGNORE_INDEX``; with ``trace``
        also every layer's output and attention distributions (:meth:`trace`), as ``(logits, hiddens, probs)``."""
        if not trace:
            return self.masked_logits(self.encode(input_ids, attention_mask), labels)
        hiddens, probs = self.trace(input_ids, attention_mask)
        return self.masked_logits(hiddens[-1], labels), hiddens, probs
