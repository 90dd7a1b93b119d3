"""Modules and model surgery: no file I/O, no argument parsing."""

from models.attention import MultiHeadAttention
from models.bert import IGNORE_INDEX, SimplifiedBert
from models.cost import model_cost, parameter_count
from models.feed_forward import FeedForward
from models.layers import TransformerLayer
from models.methods import (
    DROP,
    FFN_INIT,
    MERGE_INIT,
    STUDENT_INIT,
    attention_low_rank,
    attention_of_heads,
    feed_forward_of_neurons,
    layers_to_drop,
    merged_layer,
    normalized_output_error,
    output_projection,
    pruned_modules,
    reconstruct_feed_forward_output,
    ridge_toward,
    set_output_projection,
    student_attention,
    validated_ridge,
)
from models.surgery import assemble, select_trainable, teacher_layer_map

__all__ = [
    "DROP",
    "FFN_INIT",
    "FeedForward",
    "IGNORE_INDEX",
    "MERGE_INIT",
    "STUDENT_INIT",
    "MultiHeadAttention",
    "SimplifiedBert",
    "TransformerLayer",
    "assemble",
    "attention_low_rank",
    "attention_of_heads",
    "feed_forward_of_neurons",
    "pruned_modules",
    "layers_to_drop",
    "merged_layer",
    "model_cost",
    "parameter_count",
    "normalized_output_error",
    "output_projection",
    "reconstruct_feed_forward_output",
    "ridge_toward",
    "set_output_projection",
    "validated_ridge",
    "select_trainable",
    "teacher_layer_map",
    "student_attention",
]
