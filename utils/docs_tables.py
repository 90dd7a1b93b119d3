"""The tables of README.md, docs/RESULTS.md and docs/round3_models.md, generated from data committed under docs/data/.

A generated section sits between ``<!-- generated: NAME from FOLDER -->`` and ``<!-- end generated -->``;
:func:`regenerate` rewrites its body from the files in ``FOLDER`` (relative to the repository) by the generator
``NAME`` in :data:`GENERATORS`, so a page never shows a figure its data does not hold (``make_report.py --docs``
writes them; a test checks that the committed pages are what their data gives). A generator of a study run in
parts reads several folders, named separated by commas, or listed one a line in a ``.txt`` file (``#`` starts a
comment; docs/data/round3_parts.txt): the whole study's first, then its parts'. The file is the one list of the
parts that every page's sections read, so a new part is one line there."""

from __future__ import annotations

import contextlib
import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path

from utils.errors import UserError
from utils.study_report import (
    comparisons_markdown,
    headline_markdown,
    models_markdown,
    pooled_comparisons,
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


def _parts(study: Path, parts: tuple[Path, ...]) -> tuple[dict, list[dict], list[dict]]:
    """A study run in parts (each a study file of its own, its data folder committed: a budget each, or another
    recipe at a budget, or the same under more seeds): what the whole study plans (its ``study.json``), every
    part's models, and the parts' comparisons with each budget's best across them, Holm-corrected together. Parts
    must share the teacher and masks, and the parts at a budget a seed at least (each budget's best is chosen on
    the seeds they all have, :func:`~utils.study_report.best_across_parts`)."""
    if not (study / "study.json").is_file():
        raise UserError(f"{study / 'study.json'}: expected the whole study's plan (make_report.py --study writes it)")
    for part in parts:
        if not part.is_dir():
            raise UserError(f"{part}: expected the data folder of a part of the study")
    evaluated = [part for part in parts if (part / "models.csv").is_file()]  # a part not evaluated yet: its rows say so
    models, teacher_of, study_of, seeds_of = [], {}, {}, {}
    for part in evaluated:
        rows = read_table(part / "models.csv")
        for name in {row["study"] for row in rows}:
            if study_of.setdefault(name, part) != part:
                raise UserError(f"{part}: study {name} is also {study_of[name]}'s (a part once)")
        seeds: dict[str, set] = {}
        for row in rows:
            models.append(row)
            if row["model"] == "teacher":  # the same teacher, masks and seeds in every part, or no shared table
                key = row["evaluation"], row["seed"]
                if teacher_of.setdefault(key, (row["top1"], part))[0] != row["top1"]:
                    raise UserError(f"{part}: its teacher's {key[0]} top-1 under seed {key[1]} is not "
                                    f"{teacher_of[key][1]}'s: not parts of one study")  # fmt: skip
            else:
                seeds.setdefault(row["budget"], set()).add(row["seed"])
        for budget, found in seeds.items():
            shared, before = seeds_of.setdefault(budget, (found, []))  # the seeds every part so far has, the parts
            if not shared & found:
                raise UserError(f"{part}: budget {budget} under seeds {sorted(found)}, "
                                f"{', '.join(map(str, before))} under {sorted(shared)} together "
                                f"(parts at a budget share a seed)")  # fmt: skip
            seeds_of[budget] = shared & found, [*before, part]
    return study_about(study), models, _pooled(tuple(evaluated))


_POOLED: dict | None = None  # during one pass over the documents (_pooling_once): parts -> their pooled comparisons


@contextlib.contextmanager
def _pooling_once():
    """Pool each study's parts once for all the sections of a pass that show them (every row is computed again from
    the parts' raw results, over several seeds by a bootstrap of about a second); outside a pass every call reads
    the files anew."""
    global _POOLED
    _POOLED = {}
    try:
        yield
    finally:
        _POOLED = None


def _pooled(parts: tuple[Path, ...]) -> list[dict]:
    if _POOLED is None:
        return pooled_comparisons(list(parts))
    if parts not in _POOLED:
        _POOLED[parts] = pooled_comparisons(list(parts))
    return _POOLED[parts]


def headline_of_parts(study: Path, *parts: Path) -> str:
    """The first table of a study run in parts (``study``: its data folder, ``parts``: theirs): each budget's best
    against the field's, Holm-marked over every comparison the parts report, and a row for each budget not run."""
    about, models, comparisons = _parts(study, parts)
    return headline_markdown(models, comparisons, about["goals"], about["budgets"], about["seeds"], "best of all")


def comparisons_of_parts(study: Path, *parts: Path) -> str:
    """Every comparison the parts of a study report, Holm-corrected together."""
    return comparisons_markdown(_parts(study, parts)[2])


def seeds_of_parts(study: Path, *parts: Path) -> str:
    """The comparisons over several seeds the parts of a study report (each budget's best of all among them),
    seed by seed and over every seed, Holm-corrected with every comparison the parts report."""
    return seeds_markdown(_parts(study, parts)[2])


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
    "parts_headline": headline_of_parts,
    "parts_comparisons": comparisons_of_parts,
    "parts_seeds": seeds_of_parts,
}


def _folders_named(repo: Path, source: str) -> list[str]:
    """The data folders a section's ``from`` names: separated by commas, or listed in a ``.txt`` file, one a line."""
    if not source.endswith(".txt"):
        return source.split(",")
    if not (repo / source).is_file():
        raise UserError(f"{source}: expected the list of a study's data folders, one a line (no such file)")
    lines = (line.split("#", 1)[0].strip() for line in (repo / source).read_text().splitlines())
    return [line for line in lines if line]


def regenerate(text: str, repo: Path) -> str:
    """``text`` with every generated section's body made anew from its data folder."""

    def body(match: re.Match) -> str:
        opening, name, source, _, closing = match.groups()
        if name not in GENERATORS:
            raise UserError(f"generated section '{name}': no such generator (expected one of {', '.join(GENERATORS)})")
        folders = _folders_named(repo, source)
        try:
            inspect.signature(GENERATORS[name]).bind(*folders)
        except TypeError:
            folders = []
        if not all(folders) or not folders:
            raise UserError(f"generated section '{name}': {source} is not the folders it reads")
        return f"{opening}{GENERATORS[name](*(repo / folder for folder in folders))}{closing}"

    return SECTION.sub(body, text)


def regenerated_documents(repo: Path) -> dict[Path, tuple[str, str]]:
    """Each of :data:`DOCUMENTS`: its text, and that text with every generated section made anew, in one pass."""
    with _pooling_once():
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
