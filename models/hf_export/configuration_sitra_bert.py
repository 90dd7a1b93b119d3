"""Configuration of a sitra-simplified BERT: BERT's config plus one entry per layer.

Part of a model folder exported by sitra; it imports only transformers, so the folder loads with
``trust_remote_code=True`` without sitra installed.
"""

from transformers import BertConfig


class SitraBertConfig(BertConfig):
    """``BertConfig`` (embeddings, hidden size, vocabulary, LayerNorm, activation) plus ``layers``: one dict per
    encoder layer with ``heads``, ``d_k`` (head size), ``intermediate_size`` (feed-forward width),
    ``attention_dropout``, ``hidden_dropout``, ``kind`` (teacher / student_attention / merged) and
    ``teacher_layers`` (the teacher layers it stands for). ``num_hidden_layers`` is ``len(layers)``."""

    model_type = "sitra-bert"

    def __init__(self, layers=None, **kwargs):
        super().__init__(**kwargs)
        if layers is None:  # a plain BERT layout
            layers = [
                {
                    "heads": self.num_attention_heads,
                    "d_k": self.hidden_size // self.num_attention_heads,
                    "intermediate_size": self.intermediate_size,
                    "attention_dropout": self.attention_probs_dropout_prob,
                    "hidden_dropout": self.hidden_dropout_prob,
                    "kind": "teacher",
                    "teacher_layers": [index],
                }
                for index in range(self.num_hidden_layers)
            ]
        self.layers = [dict(layer) for layer in layers]
        self.num_hidden_layers = len(self.layers)
