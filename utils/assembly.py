"""Collect trained pieces (student attentions, merged layers) from their run checkpoints."""
from __future__ import annotations

import logging
from pathlib import Path

from models import MultiHeadAttention, SimplifiedBert, TransformerLayer
from utils.checkpoint import LATEST
from utils.errors import UserError
from utils.experiment import block_run_name, checkpoint_root
from utils.model_io import load_block_checkpoint

log = logging.getLogger(__name__)


def run_checkpoint(storage_directory: str | Path, kind: str, block: int, d_k: int, heads: int) -> Path:
    """``{storage}/checkpoints/wikitext2/{kind}_{block}_{d_k}_{heads}/latest.pt``"""
    return checkpoint_root(storage_directory) / block_run_name(kind, block, d_k, heads) / LATEST


def _checked_state(path: Path, teacher_name: str, heads: int, d_k: int) -> dict:
    state = load_block_checkpoint(path, heads, d_k, flag="checkpoint")
    trained_on = state.get("identity", {}).get("teacher")
    if trained_on != teacher_name:
        raise UserError(f"checkpoint {path} was trained on teacher {trained_on}, not {teacher_name}")
    return state


def attention_from_state(state: dict, hidden: int) -> MultiHeadAttention:
    """A student attention rebuilt from a block checkpoint (its shape is in the checkpoint's identity)."""
    identity, flags = state["identity"], state.get("flags", {})
    attention = MultiHeadAttention(hidden, identity["block_heads"], identity["block_d_k"], flags.get("block_dropout", 0.1))
    attention.load_state_dict(state["model"])
    return attention


def collect_attentions(
    storage_directory: str | Path, teacher: SimplifiedBert, teacher_name: str, heads: int, d_k: int,
    blocks: list[int] | None = None, kind: str = "block",
) -> tuple[dict[int, MultiHeadAttention], dict[int, Path], list[int]]:  # fmt: skip
    """Student attentions of ``blocks`` (default: every layer) from ``kind`` runs (``block`` =
    retrain_single_block, ``till_end`` = train_block_till_end). Returns the attentions, the checkpoint
    each came from, and the blocks without a checkpoint (they keep the teacher's attention)."""
    blocks = list(range(len(teacher.layers))) if blocks is None else blocks
    attentions, sources, missing = {}, {}, []
    for block in blocks:
        path = run_checkpoint(storage_directory, kind, block, d_k, heads)
        if not path.exists():
            missing.append(block)
            continue
        state = _checked_state(path, teacher_name, heads, d_k)
        attentions[block] = attention_from_state(state, teacher.config.hidden_size)
        sources[block] = path
    return attentions, sources, missing


def merged_layer_from_state(state: dict, teacher: SimplifiedBert, block: int) -> TransformerLayer:
    """A merged layer (replacing ``block``, ``block+1``) rebuilt from a retrain_merge checkpoint."""
    identity, flags = state["identity"], state.get("flags", {})
    layer = TransformerLayer.fresh(
        teacher.config, identity["block_heads"], identity["block_d_k"], flags.get("block_dropout", 0.1),
        teacher.config.intermediate_size, origin={"kind": "merged", "teacher_layers": [block, block + 1]},
    )  # fmt: skip
    layer.load_state_dict(state["model"])
    return layer


def collect_merged_layers(
    storage_directory: str | Path, teacher: SimplifiedBert, teacher_name: str, heads: int, d_k: int,
    kind: str = "merge", below: int | None = None,
) -> tuple[dict[int, TransformerLayer], dict[int, Path], list[int]]:  # fmt: skip
    """Merged layers of every pair (0-1, 2-3, ...; an odd last layer stays the teacher's) from ``kind``
    runs (``merge`` = retrain_merge, ``conditioned`` = finetune_conditioned_fully_merged); with
    ``below``, only the pairs starting before that layer."""
    layers, sources, missing = {}, {}, []
    last_start = len(teacher.layers) - 1 if below is None else below
    for block in range(0, last_start, 2):
        path = run_checkpoint(storage_directory, kind, block, d_k, heads)
        if not path.exists():
            missing.append(block)
            continue
        layers[block] = merged_layer_from_state(_checked_state(path, teacher_name, heads, d_k), teacher, block)
        sources[block] = path
    return layers, sources, missing
