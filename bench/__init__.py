"""Benchmarks (not tests): timing runs on the offline teacher or a random teacher of bert-base shape."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models import SimplifiedBert
from utils.args import require_unused
from utils.experiment import log
from utils.model_io import load_simplified
from utils.onnx_optimize import SHORTLIST_FORMS
from utils.teacher import Teacher, load_teacher

# What every training benchmark times unless told otherwise: one epoch, a token validation pass (timing,
# not quality), the offline teacher's head size, results under storage/bench.
TIMING_DEFAULTS = dict(teacher="minilm", storage_directory="storage/bench", eval_sentences=1, epochs=1, block_d_k=32)


def teacher_and_models(teacher: str, folders: list[str]) -> tuple[Teacher, dict[str, SimplifiedBert]]:
    """The teacher and the saved models of ``folders`` on the CPU (where the latency benchmarks time them), by
    name: ``teacher`` first, then each model by its folder's name."""
    loaded = load_teacher(teacher, torch.device("cpu"))
    models = {"teacher": loaded.model}
    for folder in folders:
        models[Path(folder).name] = load_simplified(folder)[0]  # in eval mode
    return loaded, models


def write_results(root: Path, name: str, result: dict, lines: list[str]) -> None:
    """``result`` as ``{name}.json`` and the table ``lines`` as ``{name}.md`` in ``root``; the table is also printed."""
    (root / f"{name}.json").write_text(json.dumps(result, indent=2))
    (root / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    log.info("results in %s", root)


def shortlisted(forms: list[str], groups: tuple, flag: str) -> bool:
    """Whether any of ``forms`` (named by ``flag``) has a shortlisted head; where none has, every flag of ``groups``
    (what only those forms read) must stay at its default: a value for one would change nothing."""
    if any(form in SHORTLIST_FORMS for form in forms):
        return True
    for group in groups:
        require_unused(group, f"only the shortlisted forms ({', '.join(SHORTLIST_FORMS)}) read it: add one to {flag}")
    return False
