"""The layer-merging workflow shared by retrain_merge.py and finetune_conditioned_fully_merged.py."""
from __future__ import annotations

from models import SimplifiedBert, TransformerLayer, merged_layer
from utils.data import WikiTextSplits, eval_loader
from utils.experiment import block_run_name, log, run_directory
from utils.objectives import MergeDistillation
from utils.teacher import Teacher
from utils.teacher_cache import cached_training_set
from utils.training import fit


def train_merged_layer(
    teacher: Teacher, block: int, args, device, data: WikiTextSplits, run_kind: str = "merge",
    prefix: SimplifiedBert | None = None, prefix_stop: int | None = None, warm_start: dict | None = None,
) -> tuple[TransformerLayer, list[dict]]:  # fmt: skip
    """Train (or resume) the merged layer of pair ``block, block+1`` in run ``{run_kind}_{block}_{d_k}_{heads}``.

    Starts from ``args.merge_init`` or, when given, from the state dict ``warm_start``.
    """
    layer = merged_layer(teacher.model, block, args.block_heads, args.block_d_k, args.block_dropout, args.merge_init)
    if warm_start is not None:
        layer.load_state_dict(warm_start)
        log.info("merged layer %d-%d warm-started from a retrain_merge checkpoint", block, block + 1)
    layer.to(device)
    objective = MergeDistillation(teacher.model, block, layer, prefix, prefix_stop, teacher.has_mlm_head, device)
    identity = {"teacher": teacher.name, "block": block, "block_heads": args.block_heads, "block_d_k": args.block_d_k,
                "seq_len": args.seq_len, "merge_init": args.merge_init,
                "cache_teacher": getattr(args, "cache_teacher", False)}  # fmt: skip
    run = run_directory(args, block_run_name(run_kind, block, args.block_d_k, args.block_heads), identity)
    train_set = data.train
    if getattr(args, "cache_teacher", False):  # only the unconditioned merge offers it: its input is the teacher's
        train_set = cached_training_set(args, f"merge_{block}", teacher.name, block, objective, data.train,
                                        teacher.model.config.hidden_size, device)  # fmt: skip
    history = fit(objective, train_set, eval_loader(data.validation, args.batch_size, args.eval_sentences), args, run, device)
    return layer.eval(), history
