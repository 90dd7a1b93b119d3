"""Modules and model surgery: no file I/O, no argument parsing."""

from models.attention import MultiHeadAttention
from models.bert import IGNORE_INDEX, SimplifiedBert
from models.cost import model_cost, parameter_count
from models.layers import TransformerLayer
from models.surgery import (
    DROP_RULES,
    assemble,
    attention_low_rank,
    attention_of_heads,
    layers_to_drop,
    merged_layer,
    select_trainable,
    student_attention,
)

__all__ = [
    "DROP_RULES",
    "IGNORE_INDEX",
    "MultiHeadAttention",
    "SimplifiedBert",
    "TransformerLayer",
    "assemble",
    "attention_low_rank",
    "attention_of_heads",
    "layers_to_drop",
    "merged_layer",
    "model_cost",
    "parameter_count",
    "select_trainable",
    "student_attention",
]
