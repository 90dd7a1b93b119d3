"""Collect trained pieces (student attentions, merged layers) from their run checkpoints.

A checkpoint written by :func:`utils.training.fit` holds the trained module's own ``spec`` (heads, d_k,
dropout; for a merged layer also its intermediate size and teacher layers), so a module is rebuilt
from what was trained, not from flags. Checkpoints older than that record their shape in ``identity``
and ``flags``; :func:`checkpoint_spec` reads those the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path

from models import FeedForward, MultiHeadAttention, SimplifiedBert, TransformerLayer
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.model_io import load_block_checkpoint
from utils.storage import Storage

log = logging.getLogger(__name__)

SEED_DROPOUT = 0.1  # what checkpoints without a spec were trained with unless --block_dropout said otherwise


def checkpoint_spec(state: dict) -> dict:
    """The trained module's spec of a block or merge checkpoint."""
    if "spec" in state:
        return state["spec"]
    identity, flags = state["identity"], state.get("flags", {})
    return {
        "heads": identity["block_heads"],
        "d_k": identity["block_d_k"],
        "dropout": flags.get("block_dropout", SEED_DROPOUT),
    }


def _checked_state(path: Path, teacher_name: str, heads: int, d_k: int) -> dict:
    state = load_block_checkpoint(path, heads, d_k, flag="checkpoint")
    trained_on = state.get("identity", {}).get("teacher")
    if trained_on != teacher_name:
        raise UserError(f"checkpoint {path} was trained on teacher {trained_on}, not {teacher_name}")
    return state


def attention_from_state(state: dict, hidden: int) -> MultiHeadAttention:
    """A student attention rebuilt from a block checkpoint."""
    spec = checkpoint_spec(state)
    attention = MultiHeadAttention(hidden, spec["heads"], spec["d_k"], spec["dropout"])
    attention.load_state_dict(state["model"])
    return attention


def merged_layer_from_state(state: dict, teacher: SimplifiedBert, block: int) -> TransformerLayer:
    """A merged layer (replacing ``block``, ``block+1``) rebuilt from a retrain_merge checkpoint."""
    spec = checkpoint_spec(state)
    origin = {"kind": "merged", "teacher_layers": spec.get("teacher_layers", [block, block + 1])}
    intermediate_size = spec.get("intermediate_size", teacher.config.intermediate_size)
    layer = TransformerLayer.fresh(
        teacher.config, spec["heads"], spec["d_k"], spec["dropout"], intermediate_size, origin
    )
    layer.load_state_dict(state["model"])
    return layer


def collect_attentions(
    storage_directory: str | Path,
    teacher: SimplifiedBert,
    teacher_name: str,
    heads: int,
    d_k: int,
    blocks: list[int] | None = None,
    kind: str = "block",
    variant: str = "",
) -> tuple[dict[int, MultiHeadAttention], dict[int, Path], list[int]]:
    """Student attentions of ``blocks`` (default: every layer) from ``kind`` runs (``block`` =
    retrain_single_block, ``till_end`` = train_block_till_end) of ``variant`` (:func:`utils.runs.run_variant`).
    Returns the attentions, the checkpoint each came from, and the blocks without a checkpoint (they keep
    the teacher's attention)."""
    storage = Storage(storage_directory)
    blocks = list(range(len(teacher.layers))) if blocks is None else blocks
    attentions, sources, missing = {}, {}, []
    for block in blocks:
        path = storage.block_output(kind, block, heads, d_k, variant)
        if not path.exists():
            missing.append(block)
            continue
        state = _checked_state(path, teacher_name, heads, d_k)
        attentions[block] = attention_from_state(state, teacher.config.hidden_size)
        sources[block] = path
    return attentions, sources, missing


def collect_feed_forwards(
    storage_directory: str | Path,
    teacher: SimplifiedBert,
    teacher_name: str,
    width: int,
    blocks: list[int] | None = None,
    variant: str = "",
) -> tuple[dict[int, FeedForward], dict[int, Path], list[int]]:
    """Student feed-forwards of width ``width`` of ``blocks`` (default: every layer) from ``ffn`` runs of
    ``variant``. Returns the feed-forwards, the checkpoint each came from, and the blocks without one (they
    keep the teacher's feed-forward)."""
    storage = Storage(storage_directory)
    blocks = list(range(len(teacher.layers))) if blocks is None else blocks
    feed_forwards, sources, missing = {}, {}, []
    for block in blocks:
        path = storage.ffn_output(block, width, variant)
        if not path.exists():
            missing.append(block)
            continue
        state = load_checkpoint(path)
        trained_on = state.get("identity", {}).get("teacher")
        if trained_on != teacher_name:
            raise UserError(f"checkpoint {path} was trained on teacher {trained_on}, not {teacher_name}")
        layer = teacher.layers[block]
        feed_forward = FeedForward.fresh(layer.ffn_in.in_features, state["spec"]["intermediate_size"], layer.activation)
        feed_forward.load_state_dict(state["model"])
        feed_forwards[block], sources[block] = feed_forward, path
    return feed_forwards, sources, missing


def merged_layer_paths(
    storage_directory: str | Path,
    num_layers: int,
    heads: int,
    d_k: int,
    kind: str = "merge",
    below: int | None = None,
    variant: str = "",
) -> list[tuple[int, Path]]:
    """Where :func:`collect_merged_layers` looks for each pair's merged layer: (first layer, checkpoint path)."""
    storage = Storage(storage_directory)
    last_start = num_layers - 1 if below is None else below
    return [(block, storage.block_output(kind, block, heads, d_k, variant)) for block in range(0, last_start, 2)]


def collect_merged_layers(
    storage_directory: str | Path,
    teacher: SimplifiedBert,
    teacher_name: str,
    heads: int,
    d_k: int,
    kind: str = "merge",
    below: int | None = None,
    variant: str = "",
) -> tuple[dict[int, TransformerLayer], dict[int, Path], list[int]]:
    """Merged layers of every pair (0-1, 2-3, ...; an odd last layer stays the teacher's) from ``kind``
    runs (``merge`` = retrain_merge, ``conditioned`` = finetune_conditioned_fully_merged) of ``variant``;
    with ``below``, only the pairs starting before that layer."""
    layers, sources, missing = {}, {}, []
    for block, path in merged_layer_paths(storage_directory, len(teacher.layers), heads, d_k, kind, below, variant):
        if not path.exists():
            missing.append(block)
            continue
        layers[block] = merged_layer_from_state(_checked_state(path, teacher_name, heads, d_k), teacher, block)
        sources[block] = path
    return layers, sources, missing
