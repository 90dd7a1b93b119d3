"""What each flag does to a run's result: the one declaration run identities and folder names derive from.

Every flag is part of a run's identity unless it is declared below as :data:`NEUTRAL` (it does not change
what is trained or measured) or :data:`CONTINUABLE` (it may change when a run is continued: more epochs, a
smaller learning rate after a divergence). So a flag added later is identity by default: a checkpoint made
with another value is refused, never taken for this experiment.

Some identity flags choose a *variant* of an experiment that a researcher sweeps within one storage
directory (an init, a criterion, a healing temperature): :data:`NAMED` gives each a short piece that a
non-default value adds to the run's folder name, so ``block_5_32_6`` (today's defaults) and
``block_5_32_6-init_svd`` or ``block_5_32_6-ce_logits`` are separate runs. The other identity flags (data
scale, batch size, seed, precision) keep the folder name and a mismatch is a one-line refusal. The precision is
recorded as the run resolved it at its start (bf16 or fp32, never ``auto``: utils.device.resolve_precision), so an
fp32 run is not resumed by an ``auto`` that means bf16 on another machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

# Flags that do not change what a run trains or measures, each with the reason.
NEUTRAL = {
    "device": "where it runs, not what it computes",
    "storage_directory": "where results go",
    "data_dir": "where the WikiText-2 files lie, not which text they hold",
    "save_checkpoint_every": "how often a kept copy is written",
    "no_resume": "whether an old run is moved aside first",
    "eval_sentences": "how much of the validation split is reported after each epoch",
    "export_hf": "an extra copy of the saved model",
    "output_model": "where the finished model is saved",
    "output_dir": "where the finished teacher is saved",
    "all": "which pairs of the chain this invocation trains; each pair's run is the same",
    "store_layers": "which layers a shared store keeps; a run's own layers are there or it is refused",
}

# Flags a continued run may change: the new value applies from the next step on and is logged; a finished run
# asked for another value is refused (see utils.checkpoint.RunDirectory.prepare).
CONTINUABLE = (
    "epochs",
    "max_steps",
    "stop_patience",
    "stop_min_delta",
    "lr",
    "head_lr",
    "adam_weight_decay",
    "adam_beta1",
    "adam_beta2",
)

_CRITERIA = {"L1": "l1", "CrossEntropy": "ce"}


def _init_source(path: str) -> str:
    """``--init_from``: 'none' is a student trained from scratch, else the run folder the checkpoint is in."""
    return "scratch" if path == "none" else f"from_{Path(path).parent.name or Path(path).stem}"


# Identity flags whose non-default value names the run's folder (and the model a finetuning saves).
NAMED: dict[str, Callable[[object], str]] = {
    "student_init": lambda value: f"init_{value}",
    "merge_init": lambda value: f"init_{value}",
    "ffn_init": lambda value: f"init_{value}",
    "merge_ffn_width": lambda value: f"ffn{value}",
    "criterion": lambda value: _CRITERIA[value],
    "loss_on_logits": lambda value: "logits",
    "loss_on_scores": lambda value: "scores",
    "init_from": _init_source,
    "drop_count": lambda value: f"drop{value}",
    "train_ffn": lambda value: "ffn",
    "train_layers": lambda value: "layers",
    "temperature": lambda value: f"t{value:g}",
    "hard_label_weight": lambda value: f"hard{value:g}",
    "healing": lambda value: value,
}


def _default(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _flag_values(groups) -> list[tuple[str, object, object]]:
    """(name, value, declared default) of every flag of the parsed ``groups``."""
    return [
        (field.name, getattr(group, field.name), _default(field))
        for group in groups
        for field in dataclasses.fields(group)
        if field.init
    ]


def run_identity(groups, **explicit) -> dict:
    """The values a checkpoint must share with the flags to be this run: every flag of ``groups`` (the parsed
    flag groups of a script) but the neutral and continuable ones; ``explicit`` entries (the teacher by
    content, a resolved path) replace or add to them."""
    identity = {
        name: value for name, value, _ in _flag_values(groups) if name not in NEUTRAL and name not in CONTINUABLE
    }
    return {**identity, **explicit}


def variant(groups) -> str:
    """The folder-name suffix of the named flags of ``groups`` that differ from their default:
    ``""`` for today's defaults, else ``-`` and the pieces joined by ``_`` (``-ce_logits``, ``-init_svd_t4``)."""
    pieces = [NAMED[name](value) for name, value, default in _flag_values(groups) if name in NAMED and value != default]
    return "-" + "_".join(pieces) if pieces else ""
