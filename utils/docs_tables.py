"""The tables of README.md, docs/RESULTS.md and docs/round3_models.md, generated from data committed under docs/data/.

A generated section sits between ``<!-- generated: NAME from FOLDER -->`` and ``<!-- end generated -->``;
:func:`regenerate` rewrites its body from the files in ``FOLDER`` (relative to the repository) by the generator
``NAME`` in :data:`GENERATORS`, so a page never shows a figure its data does not hold (``make_report.py --docs``
writes them; a test checks that the committed pages are what their data gives). A study is one data folder
(``docs/data/round3``: every variant and seed of its one study file)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from utils.errors import UserError
from utils.study_report import (
    comparisons_markdown,
    headline_markdown,
    models_markdown,
    read_table,
    seeds_markdown,
    students_markdown,
    study_about,
)

SECTION = re.compile(r"(<!-- generated: (\w+) from (\S+) -->\n)(.*?)(<!-- end generated -->)", re.DOTALL)
DOCUMENTS = ("README.md", "docs/RESULTS.md", "docs/round3_models.md", "docs/OPERATIONS.md")

# the speed goals of issue 35: FLOP reduction -> batch-1 speed-up (ONNX Runtime, against the teacher in the same form)
SPEED_GOALS = {2.0: 1.8, 3.0: 2.5, 4.0: 3.0}
BATCH_64_GOAL = 0.85  # batch 64: speed-up / FLOP reduction
SPEED_FORMS = {  # the runtime forms the page shows, as bench/latency.py names them
    "ort_fused": "fused fp32",
    "ort_fused_int8_head": "int8 head",
    "ort_fused_int8_head_short": "int8 head, shortlist",
    "ort_fused_int8": "int8 every weight",
}


def _span(values: list[float], unit: str = "×", digits: int = 2) -> str:
    """``1.61–1.65×`` over the runs (one value when they agree to the digits shown)."""
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return f"{low}{unit}" if low == high else f"{low}–{high}{unit}"


def _speed_runs(folder: Path) -> tuple[dict[tuple, list[float]], dict[str, float], list[str]]:
    """From every ``latency*run*.json`` of ``folder``: (model, batch, form) -> the figure of each run that timed it
    (the teacher's milliseconds, else the speed-up), each model's FLOP reduction, and the models in order."""
    runs = [json.loads(path.read_text()) for path in sorted(folder.glob("latency*run*.json"))]
    if not runs:
        raise UserError(f"{folder}: no latency*run*.json (bench/latency.py writes them)")
    cells: dict[tuple, list[float]] = {}
    reductions: dict[str, float] = {}
    for run in runs:
        for row in run["rows"]:
            if row["runtime"] in SPEED_FORMS:
                value = row["ms"] if row["model"] == "teacher" else row["speedup"]
                cells.setdefault((row["model"], row["batch_size"], row["runtime"]), []).append(value)
                reductions[row["model"]] = row["flop_reduction"]
    return cells, reductions, list(reductions)


def speed_markdown(folder: Path) -> str:
    """Batch-1 and batch-64 speed-ups of every model in every form of :data:`SPEED_FORMS` over the runs in
    ``latency*run*.json`` (a range when the runs differ; each form's figures from the runs that timed it), the goals
    met or not, and the price in top-1 of each form (``onnx_accuracy*.json``)."""
    cells, reductions, models = _speed_runs(folder)
    forms = list(SPEED_FORMS)
    header = " | ".join(f"batch {batch}: {SPEED_FORMS[form]}" for batch in (1, 64) for form in forms)
    lines = [f"| model | FLOP reduction | {header} |", "|---|---|" + "---|" * 2 * len(forms)]
    for model in models:
        flops = reductions[model]
        row = [model, f"{flops:.2f}×"]
        for batch in (1, 64):
            for form in forms:
                values = cells.get((model, batch, form))
                if not values:
                    row.append("")
                elif model == "teacher":
                    row.append(_span(values, " ms", 1))
                else:
                    per_flop = f" ({_span([v / flops for v in values], '')})" if batch == 64 else ""
                    row.append(_span(values) + per_flop)
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", *_speed_goals(cells, reductions, models), ""]
    prices = [json.loads(path.read_text()) for path in sorted(folder.glob("onnx_accuracy*.json"))]
    if prices:
        lines += _price_in_top1(prices)
    return "\n".join(lines) + "\n"


def speed_verdict(folder: Path) -> str:
    """The speed goals only, met or not (the first screen of docs/RESULTS.md)."""
    return "\n".join(_speed_goals(*_speed_runs(folder))) + "\n"


def _speed_goals(cells: dict, reductions: dict[str, float], models: list[str]) -> list[str]:
    """One line per goal: the best batch-1 speed-up of a model at that FLOP reduction, in each form of
    :data:`SPEED_FORMS`; then batch 64's lowest speed-up ÷ FLOP reduction in each form."""
    forms, lines = list(SPEED_FORMS), []
    for reduction, goal in SPEED_GOALS.items():
        near = [m for m in models if m != "teacher" and abs(reductions[m] - reduction) / reduction < 0.05]
        if not near:
            continue
        verdicts = []
        for form in forms:
            best = max(near, key=lambda m: min(cells.get((m, 1, form), [0])))
            values = cells.get((best, 1, form), [])
            if values:
                met = "met" if min(values) >= goal else "met in one run" if max(values) >= goal else "missed"
                verdicts.append(f"{SPEED_FORMS[form]} {_span(values)} ({best}): {met}")
        lines.append(f"- {reduction:.0f}× fewer FLOPs, goal ≥ {goal}× at batch 1: " + "; ".join(verdicts) + ".")
    verdicts = []
    for form in forms:
        ratios = [value / reductions[m] for m in models if m != "teacher" for value in cells.get((m, 64, form), [])]
        if ratios:
            verdicts.append(
                f"{SPEED_FORMS[form]} {min(ratios):.2f} ({'met' if min(ratios) >= BATCH_64_GOAL else 'missed'})"
            )
    if verdicts:
        lines.append(
            f"- Batch 64 within {BATCH_64_GOAL:.0%} of the FLOP reduction, the lowest ratio: "
            + "; ".join(verdicts)
            + "."
        )
    return lines


def _price_in_top1(runs: list[dict]) -> list[str]:
    """Each form's price in top-1 against the same model's fused fp32 graph, on the same masks, paired (the forms of
    every ``onnx_accuracy*.json``, on the same sentences)."""
    forms = [form for form in SPEED_FORMS if form != "ort_fused"]
    results: dict[str, dict[str, dict]] = {}
    for run in runs:
        for model, by_form in run["models"].items():
            results.setdefault(model, {}).update(by_form)
    lines = [
        f"The price in top-1 (points, paired on the same {runs[0]['sentences']:,} test sentences against the model's "
        "fused fp32 graph, 95% interval; ⚠: loses more than half a point):",
        "",
        "| model | " + " | ".join(SPEED_FORMS[form] for form in forms) + " |",
        "|---|" + "---|" * len(forms),
    ]
    for model, by_form in results.items():
        row = [model]
        for form in forms:
            result = by_form.get(form)
            if result is None:
                row.append("")
                continue
            low, value, high = (100 * result[f"top1_vs_fp32{part}"] for part in ("_low", "", "_high"))
            flag = " ⚠" if result["loses_over_half_a_point"] else ""
            row.append(f"{value:+.2f} [{low:+.2f}, {high:+.2f}]{flag}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def headline_of_study(folder: Path) -> str:
    """The first table of a committed study: each budget's best, against the field's, with its goal; a study whose
    models are not evaluated yet (no models.csv) has a row per planned budget that says so."""
    about = study_about(folder)  # make_report.py --study writes study.json beside the tables
    evaluated = (folder / "models.csv").is_file()
    models = read_table(folder / "models.csv") if evaluated else []
    comparisons = read_table(folder / "comparisons.csv") if evaluated else []
    return headline_markdown(models, comparisons, about["goals"], about["budgets"], about["seeds"])


def students_of_study(folder: Path) -> str:
    """A committed study's students: epochs trained, what ended them, the validation loss and top-1 they bought."""
    return students_markdown(read_table(folder / "students.csv"))


def models_of_study(folder: Path) -> str:
    """A committed study's healed models, a table per budget: test top-1, agreement and KL, and validation top-1."""
    return models_markdown(read_table(folder / "models.csv"))


def comparisons_of_study(folder: Path) -> str:
    """A committed study's paired comparisons, Holm-corrected together: how many, and each difference."""
    return comparisons_markdown(read_table(folder / "comparisons.csv"))


def seeds_of_study(folder: Path) -> str:
    """A committed study's comparisons over several seeds, seed by seed and over every seed."""
    return seeds_markdown(read_table(folder / "comparisons.csv"))


def study_keys(schema: Path) -> str:
    """Every key of a study file, from the study schema (``workflow/schemas/study.schema.yaml``)."""
    from utils import study_file
    from utils.study import schema_enums

    if schema.resolve() != study_file.SCHEMA:
        raise UserError(f"study_keys: reads {study_file.SCHEMA.name}, not {schema}")
    return study_file.key_reference(schema_enums())


GENERATORS: dict[str, Callable[..., str]] = {
    "study_keys": study_keys,
    "speed": speed_markdown,
    "speed_verdict": speed_verdict,
    "study_headline": headline_of_study,
    "study_students": students_of_study,
    "study_models": models_of_study,
    "study_comparisons": comparisons_of_study,
    "study_seeds": seeds_of_study,
}


def regenerate(text: str, repo: Path) -> str:
    """``text`` with every generated section's body made anew from its data folder."""

    def body(match: re.Match) -> str:
        opening, name, source, _, closing = match.groups()
        if name not in GENERATORS:
            raise UserError(f"generated section '{name}': no such generator (expected one of {', '.join(GENERATORS)})")
        if not (repo / source).exists():
            raise UserError(f"generated section '{name}': {source}: no such data folder")
        return f"{opening}{GENERATORS[name](repo / source)}{closing}"

    return SECTION.sub(body, text)


def regenerated_documents(repo: Path) -> dict[Path, tuple[str, str]]:
    """Each of :data:`DOCUMENTS`: its text, and that text with every generated section made anew, in one pass."""
    texts = {repo / name: (repo / name).read_text() for name in DOCUMENTS}
    return {path: (text, regenerate(text, repo)) for path, text in texts.items()}


def regenerate_documents(repo: Path) -> list[Path]:
    """Rewrite the generated sections of :data:`DOCUMENTS`; returns the files that changed."""
    changed = []
    for path, (text, new) in regenerated_documents(repo).items():
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed
