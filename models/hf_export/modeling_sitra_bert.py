"""A BERT encoder whose layers each have their own attention shape (heads x d_k) and feed-forward width.

Part of a model folder exported by sitra; it imports only torch and transformers. Embeddings and the
masked-LM head are BERT's own; every layer is post-LayerNorm like ``BertLayer``:
``x = LN(x + drop(attention(x))); x = LN(x + drop(W2 act(W1 x)))``.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.models.bert.modeling_bert import BertEmbeddings, BertOnlyMLMHead, BertPooler

from .configuration_sitra_bert import SitraBertConfig

try:  # transformers >= 5: initialisers that leave weights loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # pragma: no cover - older transformers initialise before loading
    from torch.nn import init

try:  # transformers >= 4.52: layers of this class are checkpointed by gradient_checkpointing_enable()
    from transformers.modeling_layers import GradientCheckpointingLayer as _LayerBase
except ImportError:  # pragma: no cover - older transformers: no gradient checkpointing
    _LayerBase = nn.Module

TIED_WEIGHTS = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}
_TRANSFORMERS_MAJOR = int(__import__("transformers").__version__.split(".")[0])


class SitraBertAttention(nn.Module):
    """Self-attention with ``heads`` heads of size ``d_k`` and an output projection back to ``hidden``."""

    def __init__(self, hidden: int, heads: int, d_k: int, dropout: float):
        super().__init__()
        self.heads, self.d_k, self.dropout = heads, d_k, dropout
        self.query = nn.Linear(hidden, heads * d_k)
        self.key = nn.Linear(hidden, heads * d_k)
        self.value = nn.Linear(hidden, heads * d_k)
        self.output = nn.Linear(heads * d_k, hidden)

    def forward(self, hidden: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """hidden [B, T, H], key_padding_mask [B, T] bool (True = real token) -> [B, T, H]"""
        batch, length, _ = hidden.shape

        def split(x):
            return x.view(batch, length, self.heads, self.d_k).transpose(1, 2)

        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        context = F.scaled_dot_product_attention(
            split(self.query(hidden)),
            split(self.key(hidden)),
            split(self.value(hidden)),
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.output(context.transpose(1, 2).reshape(batch, length, self.heads * self.d_k))


class SitraBertLayer(_LayerBase):
    def __init__(self, config: SitraBertConfig, spec: dict):
        super().__init__()
        hidden = config.hidden_size
        self.attention = SitraBertAttention(hidden, spec["heads"], spec["d_k"], spec["attention_dropout"])
        self.attention_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(hidden, spec["intermediate_size"])
        self.ffn_out = nn.Linear(spec["intermediate_size"], hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.activation = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(spec["hidden_dropout"])

    def forward(self, hidden: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.attention_norm(hidden + self.dropout(self.attention(hidden, key_padding_mask)))
        return self.ffn_norm(hidden + self.dropout(self.ffn_out(self.activation(self.ffn_in(hidden)))))


class SitraBertPreTrainedModel(PreTrainedModel):
    config_class = SitraBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True

    def _init_weights(self, module):
        """BERT's initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorms; the
        embeddings' index buffers (not saved) are rebuilt."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, BertEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)


class SitraBertModel(SitraBertPreTrainedModel):
    def __init__(self, config: SitraBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(SitraBertLayer(config, spec) for spec in config.layers)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        """input_ids / attention_mask / token_type_ids: [B, T] -> last_hidden_state [B, T, H] (and the
        pooled [CLS] state [B, H], every layer's input and output state with ``output_hidden_states``)."""
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        hidden = self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )
        key_padding_mask = None if attention_mask is None else attention_mask.bool()
        states = [hidden]
        for layer in self.layers:
            hidden = layer(hidden, key_padding_mask)
            states.append(hidden)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        output = BaseModelOutputWithPooling(
            last_hidden_state=hidden,
            pooler_output=pooled,
            hidden_states=tuple(states) if output_hidden_states else None,
        )
        return output if return_dict is not False else output.to_tuple()


class _SitraBertWithHead(SitraBertPreTrainedModel):
    """The encoder (``self.bert``) and a task head on its states: ``head_logits`` of the encoder's outputs, the
    ``loss`` against ``labels`` with -100 ignored, both in the task's ``output_class``."""

    output_class: type

    def head_logits(self, outputs: BaseModelOutputWithPooling) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of logits [..., C] with labels [...] (-100 = ignored)."""
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        """input_ids / attention_mask / token_type_ids / ``labels``: [B, T] ([B] for a sequence's label) -> the
        task's output: logits and, with ``labels``, the loss."""
        outputs = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds,
            output_hidden_states=output_hidden_states,
        )
        logits = self.head_logits(outputs)
        loss = self.loss(logits, labels) if labels is not None else None
        output = self.output_class(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return output if return_dict is not False else output.to_tuple()


class SitraBertForMaskedLM(_SitraBertWithHead):
    """Logits [B, T, V] at every position; the masked-LM loss with ``labels`` [B, T] (-100 = ignored)."""

    _tied_weights_keys = TIED_WEIGHTS if _TRANSFORMERS_MAJOR >= 5 else list(TIED_WEIGHTS)
    output_class = MaskedLMOutput

    def __init__(self, config: SitraBertConfig):
        super().__init__(config)
        self.bert = SitraBertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def head_logits(self, outputs: BaseModelOutputWithPooling) -> torch.Tensor:
        return self.cls(outputs.last_hidden_state)


class _SitraBertClassifier(_SitraBertWithHead):
    """A linear classifier over ``num_labels`` on the encoder, after dropout (BERT's task heads)."""

    pooled: bool  # classify the pooled [CLS] state (a sequence) or every token's state

    def __init__(self, config: SitraBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = SitraBertModel(config, add_pooling_layer=self.pooled)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def head_logits(self, outputs: BaseModelOutputWithPooling) -> torch.Tensor:
        features = outputs.pooler_output if self.pooled else outputs.last_hidden_state
        return self.classifier(self.dropout(features))


class SitraBertForSequenceClassification(_SitraBertClassifier):
    """The pooled [CLS] state -> dropout -> linear over ``num_labels``; one label regresses (MSE)."""

    pooled, output_class = True, SequenceClassifierOutput

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), labels.float())
        return super().loss(logits, labels)


class SitraBertForTokenClassification(_SitraBertClassifier):
    """Every token's state -> dropout -> linear over ``num_labels`` (labels -100 are ignored)."""

    pooled, output_class = False, TokenClassifierOutput


AUTO_CLASSES = {
    "AutoModel": SitraBertModel,
    "AutoModelForMaskedLM": SitraBertForMaskedLM,
    "AutoModelForSequenceClassification": SitraBertForSequenceClassification,
    "AutoModelForTokenClassification": SitraBertForTokenClassification,
}
