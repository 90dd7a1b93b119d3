"""The evaluation every eval script runs: quality against the truth, the teacher and a reference model,
plus size, compute and latency against the teacher; written as JSON, markdown and a per-sentence TSV."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from models import IGNORE_INDEX, SimplifiedBert, model_cost, parameter_count
from models.cost import layer_flops_per_token
from utils.args import DataArguments, EvalArguments, Flags
from utils.benchmark import costs_and_latencies, relative_to
from utils.data import MaskedSentences, eval_loader, load_data
from utils.errors import UserError
from utils.files import atomic_write
from utils.metrics import evaluate_mlm
from utils.model_io import load_models, model_names
from utils.statistics import with_intervals
from utils.teacher import Teacher, load_teacher

log = logging.getLogger(__name__)

TEACHER = "teacher"
LATENCY_BATCHES = (1, 64)
PER_SENTENCE = "per_sentence.npz"
MASKS_KEY = "_masks"  # per_sentence.npz: the fingerprint of the masks its values were measured on
TABLE_COLUMNS = [
    ("sentences", "sentences", "{:,}"),
    ("top1", "top-1", "{:.1%}"),
    ("top1_vs_teacher", "top-1 − teacher", "{:+.1%}"),
    ("top5", "top-5", "{:.1%}"),
    ("top10", "top-10", "{:.1%}"),
    ("agree_top1", "= teacher top-1", "{:.1%}"),
    ("teacher_top1_in_top5", "teacher top-1 in top-5", "{:.1%}"),
    ("kl_from_teacher", "KL(teacher‖model)", "{:.3f}"),
    ("in_reference_top1", "in ref. top-1", "{:.1%}"),
    ("in_reference_top5", "in ref. top-5", "{:.1%}"),
    ("in_reference_top10", "in ref. top-10", "{:.1%}"),
    ("parameters", "params (M)", "{:.2f}"),
    ("flops_per_token", "MFLOPs/token", "{:.1f}"),
    ("latency_ms_b1", "ms (b=1)", "{:.2f}"),
    ("latency_ms_b64", "ms (b=64)", "{:.1f}"),
]
SCALE = {"parameters": 1e-6, "flops_per_token": 1e-6}
# Every evaluation runs every model (the teacher and the reference too) in fp32, without autocast, whatever precision
# the models trained in: so the figures of models trained on a GPU, a bf16 CPU or an fp32 one compare. metrics.json
# records it; a report refuses to compare evaluations of different precisions (utils.report).
EVAL_PRECISION = "fp32"


def evaluation_precision(report: dict) -> str:
    """The precision an evaluation's ``metrics.json`` ran in; one written before it was recorded ran in fp32 (no
    evaluation ever autocast)."""
    return report.get("precision", "fp32")


def load_reference(name: str | None, device: torch.device) -> SimplifiedBert | None:
    """The larger reference model (bert-large-uncased by default), or None with one warning if unavailable."""
    if not name or name.lower() == "none":
        return None
    try:
        return load_teacher(name, device).model
    except UserError as error:
        log.warning("reference model unavailable, reporting without reference metrics: %s", error)
        return None


def sentence_count(test: MaskedSentences, percentage_data: float) -> int:
    """The first ``percentage_data`` (in (0, 1], checked by :class:`EvalArguments`) of the test sentences."""
    return max(1, round(percentage_data * len(test)))


def evaluate_models(
    models: dict[str, SimplifiedBert],
    test: MaskedSentences,
    tokenizer: PreTrainedTokenizerBase,
    evaluation: EvalArguments,
    data: DataArguments,
    device: torch.device,
    output_dir: Path,
    reference: SimplifiedBert | None = None,
    described: dict[str, dict] | None = None,
) -> dict:
    """Evaluate ``models`` (one named ``teacher``) in fp32 (:data:`EVAL_PRECISION`) on the same masked test
    sentences and write ``metrics.json`` (its precision, every figure with its 95% bootstrap interval, and each
    model's paired top-1 difference from the teacher), ``metrics.md``, ``predictions.tsv`` and ``per_sentence.npz`` (the
    per-sentence outcomes, for paired comparisons across evaluations: ``make_report.py --compare``)."""
    count = sentence_count(test, evaluation.percentage_data)
    loader = eval_loader(test, evaluation.eval_batch_size, count)
    log.info("evaluation precision: %s (every model, the teacher included; no autocast)", EVAL_PRECISION)
    metrics, details = evaluate_mlm(models, loader, device, teacher=TEACHER, reference=reference, keep_predictions=True)
    with_intervals(metrics, details.values, TEACHER)
    for name, description in (described or {}).items():
        metrics[name].update(description)  # method, drop rule, healing steps: what the report groups by
    costs = costs_and_latencies(models, data.seq_len, device, evaluation.latency_repeats, LATENCY_BATCHES)
    for name in models:
        metrics[name].update(costs[name])
    teacher = dict(metrics[TEACHER])
    for values in metrics.values():  # everything relative to the teacher
        values.update(relative_to(values, teacher))
    report = {
        "sentences": count,
        "split": evaluation.split,
        "split_sentences": len(test),
        "masks": masks_fingerprint(test, count),
        "seq_len": data.seq_len,
        "seed": data.seed,
        "device": str(device),
        "precision": EVAL_PRECISION,
        "reference": evaluation.reference if reference is not None else None,
        "models": metrics,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    # the per-sentence values carry their masks and go first, metrics.json last: a run stopped between the two
    # leaves files a report refuses to pair (utils.report.per_sentence_values), never new values under old masks
    arrays = {f"{name}/{key}": value.numpy() for name, per in details.values.items() for key, value in per.items()}
    arrays[MASKS_KEY] = np.array(report["masks"])
    atomic_write(output_dir / PER_SENTENCE, lambda tmp: np.savez_compressed(open(tmp, "wb"), **arrays))
    rows = prediction_rows(test, count, tokenizer, details.predictions)
    atomic_write(output_dir / "predictions.tsv", lambda tmp: tmp.write_text(rows))
    atomic_write(output_dir / "metrics.md", lambda tmp: tmp.write_text(markdown_table(metrics)))
    atomic_write(output_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    log.info("results in %s\n%s", output_dir, markdown_table(metrics))
    return report


def evaluate_against_teacher(
    evaluation: EvalArguments,
    data: DataArguments,
    teacher: Teacher,
    models: dict[str, SimplifiedBert],
    test: MaskedSentences,
    device: torch.device,
    output_dir: Path,
    metas: dict[str, dict] | None = None,
) -> dict:
    """:func:`evaluate_models` of the teacher and ``models`` with the evaluation and data flags, and the larger
    reference model ``--reference`` when it can be loaded; ``metas`` (of saved models) tell each one's method
    and how many finetuning steps healed it (:func:`describe`)."""
    reference = load_reference(evaluation.reference, device)
    return evaluate_models(
        {TEACHER: teacher.model, **models},
        test,
        teacher.tokenizer,
        evaluation,
        data,
        device,
        output_dir,
        reference,
        {name: describe(meta) for name, meta in (metas or {}).items()},
    )


def evaluate_saved_models(flags: Flags, folders: list[Path], device: torch.device, output_dir: Path) -> dict:
    """:func:`evaluate_against_teacher` of the saved models in ``folders`` (each named by its folder) on the masked
    sentences of ``--split``, with the script's ``--teacher``, data and evaluation flags."""
    model_names(folders)  # before the teacher is loaded
    teacher = load_teacher(flags.teacher.teacher, device)
    models, metas = load_models(folders, device)
    data = load_data(flags.data, teacher.tokenizer)
    sentences = getattr(data, flags.eval.split)
    return evaluate_against_teacher(flags.eval, flags.data, teacher, models, sentences, device, output_dir, metas)


DESCRIBED = (
    "method",
    "drop_rule",
    "merge_init",
    "reconstructed",
    "variant",
    "recipe",
)  # from a saved model's meta into its evaluation


def describe(meta: dict) -> dict:
    """What an evaluation records about a model from its saved meta: its method (utils/report.py labels it),
    the rule or init that made it, and ``healing_steps``, the finetuning steps after the simplification
    (0: training-free)."""
    return {"healing_steps": meta.get("healing_steps", 0), **{key: meta[key] for key in DESCRIBED if key in meta}}


def masks_fingerprint(test: MaskedSentences, count: int) -> str:
    """Which sentences were evaluated with which masked token: paired comparisons need the same."""
    digest = hashlib.sha1()
    for index in range(count):
        item = test[index]
        digest.update(np.asarray(item["input_ids"], dtype=np.int32).tobytes())
        digest.update(np.asarray(item["labels"], dtype=np.int32).tobytes())
    return digest.hexdigest()[:16]


def cell(values: dict, key: str, fmt: str) -> str:
    """A table cell: the value, and ``± half-width`` of its 95% interval when it has one."""
    if key not in values:
        return ""
    scale = SCALE.get(key, 1)
    text = fmt.format(values[key] * scale)
    if f"{key}_low" in values:
        half_width = (values[f"{key}_high"] - values[f"{key}_low"]) / 2 * scale
        text += " ± " + (f"{100 * half_width:.1f}" if fmt.endswith("%}") else fmt.format(half_width))
    return text


def markdown_table(metrics: dict[str, dict]) -> str:
    """One row per model; percentages with the half-width of their 95% interval in points (``27.1% ± 0.9``)."""
    columns = [column for column in TABLE_COLUMNS if any(column[0] in values for values in metrics.values())]
    lines = ["| model | " + " | ".join(title for _, title, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in metrics.items():
        lines.append(f"| {name} | " + " | ".join(cell(values, key, fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines) + "\n"


def prediction_rows(test: MaskedSentences, count: int, tokenizer, predictions: dict[str, torch.Tensor]) -> str:
    """One row per sentence: masked sentence | true word | each model's top-1 | reference top-10."""
    names = [name for name in predictions if name != "reference"]
    header = ["sentence", "true"] + names + (["reference_top10"] if "reference" in predictions else [])
    lines = ["\t".join(header)]
    for index in range(count):
        item = test[index]
        target = int(item["labels"][item["labels"] != IGNORE_INDEX][0])
        sentence = tokenizer.decode(item["input_ids"][1:-1]).replace("\t", " ")
        row = [sentence, tokenizer.convert_ids_to_tokens(target)]
        row += [tokenizer.convert_ids_to_tokens(int(predictions[name][index, 0])) for name in names]
        if "reference" in predictions:
            row.append(" ".join(tokenizer.convert_ids_to_tokens(predictions["reference"][index].tolist())))
        lines.append("\t".join(row))
    return "\n".join(lines) + "\n"


def layer_table(model: SimplifiedBert, teacher: SimplifiedBert, seq_len: int) -> str:
    """Markdown: per layer what it is, heads x d_k and parameters; then totals against the teacher."""
    lines = [
        "| layer | kind | teacher layers | heads | d_k | parameters | MFLOPs/token |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, layer in enumerate(model.layers):
        spec = layer.spec
        lines.append(
            f"| {index} | {spec['kind']} | {spec['teacher_layers']} | {spec['heads']} | {spec['d_k']} | "
            f"{parameter_count(layer):,} | {layer_flops_per_token(layer, seq_len) / 1e6:.2f} |"
        )
    ours, theirs = model_cost(model, seq_len), model_cost(teacher, seq_len)
    for key in ("parameters", "encoder_parameters", "flops_per_token"):
        lines.append(
            f"| **{key}** | | | | | {ours[key]:,} ({ours[key] / theirs[key]:.1%} of the teacher's {theirs[key]:,}) | |"
        )
    return "\n".join(lines) + "\n"
