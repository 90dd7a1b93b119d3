"""A study's results as data: one tidy table of its models (a row per model x evaluation x seed) and one of its
paired comparisons, from the evaluations its workflow wrote; and the markdown tables made from those files, so
that a page reporting the study (its report, docs/RESULTS.md) is generated from the committed CSVs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from utils.errors import UserError
from utils.files import atomic_write
from utils.report import collect_results, compare_models
from utils.study import Plan

METRICS = ("top1", "top5", "top10", "agree_top1", "kl_from_teacher", "top1_vs_teacher")
MODEL_COLUMNS = (
    "study", "seed", "evaluation", "model", "family", "method", "budget", "flops_share", "healed", "sentences",
    "parameters", "parameter_ratio", "flops_per_token", "shape", "recipe",
    *(f"{metric}{part}" for metric in METRICS for part in ("", "_low", "_high")),
    "latency_ms_b1", "latency_ms_b64", "masks",
)  # fmt: skip
COMPARISON_COLUMNS = (
    "study", "seed", "budget", "first", "second", "first_family", "second_family", "sentences", "seeds",
    *(f"{metric}_{part}" for metric in ("top1", "agree_top1") for part in ("difference", "low", "high")),
    "top1_excludes_zero", "agree_top1_excludes_zero",
)  # fmt: skip
ALL_SEEDS = "all"  # the seed of a comparison whose models are averaged over every seed first


def model_rows(plan: Plan) -> list[dict]:
    """Every evaluated model of the plan (healed and, where evaluated, not) and the teacher, under every seed."""
    planned = {name: model for model in plan.models for name in (model.name, model.healed)}
    rows = []
    for seed in plan.study.seeds:
        for result in collect_results(plan.storage(seed)):
            model = planned.get(result["model"])
            if model is None and result["model"] != "teacher":
                continue  # another experiment's model in the same storage
            row = {"study": plan.study.name, "seed": seed, "evaluation": result["evaluation"]}
            if model is None:
                row |= {"model": "teacher", "family": "teacher", "method": "teacher", "budget": 1.0, "healed": False}
            else:
                row |= {"model": model.name, "family": model.family, "method": model.method, "budget": model.budget,
                        "healed": result["model"] == model.healed, "shape": json.dumps(model.shape),
                        "recipe": json.dumps(model.recipe or model.merged, sort_keys=True)}  # fmt: skip
            row["flops_share"] = result.get("flop_ratio")
            rows.append(row | {key: result[key] for key in MODEL_COLUMNS if key in result and key not in row})
    return rows


def comparison_rows(plan: Plan) -> list[dict]:
    """The study's ``comparisons``: at every budget where both families have a model, the healed models' paired
    differences (first - second) under each seed and, with several seeds, averaged over them (seed ``all``).
    A pair not evaluated on the same masks is a UserError: the study asked for it."""
    by_family = {(model.family, model.budget): model for model in plan.models}
    storages = [plan.storage(seed) for seed in plan.study.seeds]
    rows = []
    for first_family, second_family in plan.study.comparisons:
        for budget in plan.study.budgets:
            pair = by_family.get((first_family, budget)), by_family.get((second_family, budget))
            if None in pair:
                continue
            first, second = pair
            runs = [(seed, storage, ()) for seed, storage in zip(plan.study.seeds, storages, strict=True)]
            if len(storages) > 1:
                runs.append((ALL_SEEDS, storages[0], storages[1:]))
            for seed, storage, others in runs:
                result = compare_models(storage, first.healed, second.healed, others)
                row = {"study": plan.study.name, "seed": seed, "budget": budget, "first": first.name,
                       "second": second.name, "first_family": first_family, "second_family": second_family,
                       "sentences": result["sentences"], "seeds": result["seeds"]}  # fmt: skip
                for metric in ("top1", "agree_top1"):
                    paired = result.get(metric) or {}
                    row |= {f"{metric}_{key}": value for key, value in paired.items()}
                rows.append(row)
    return rows


def write_table(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def write_study_data(plan: Plan) -> dict[str, Path]:
    """``models.csv`` and ``comparisons.csv`` under the study's ``data/``, and ``report/study.md`` made from them."""
    models = model_rows(plan)
    if not models:
        raise UserError(f"--study {plan.study.path}: no evaluation under {plan.root} yet (run the workflow first)")
    files = plan.data_files
    write_table(files["models"], models, MODEL_COLUMNS)
    write_table(files["comparisons"], comparison_rows(plan), COMPARISON_COLUMNS)
    page = plan.root / "report" / "study.md"
    text = study_markdown(files["models"].parent)
    page.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(page, lambda tmp: tmp.write_text(text))
    return {**files, "page": page}


# -- tables from the data files -----------------------------------------------------------------------------------
def read_table(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"{path}: no such study data file (make_report.py --study writes it)")
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _points(row: dict, metric: str) -> str:
    """``27.10 [26.20, 28.00]``: a share as percent with its 95% interval."""
    if not row.get(metric):
        return ""
    value, low, high = (100 * float(row[f"{metric}{part}"] or "nan") for part in ("", "_low", "_high"))
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def _difference(row: dict, metric: str) -> str:
    if not row.get(f"{metric}_difference"):
        return ""
    value, low, high = (100 * float(row[f"{metric}_{part}"]) for part in ("difference", "low", "high"))
    mark = " *" if row[f"{metric}_excludes_zero"] == "True" else ""
    return f"{value:+.2f} [{low:+.2f}, {high:+.2f}]{mark}"


def models_markdown(rows: list[dict]) -> str:
    """One table per budget and evaluation: every healed model's top-1, agreement and KL, each seed a row."""
    lines = []
    shown = [row for row in rows if row["healed"] == "True" or row["model"] == "teacher"]
    for budget in sorted({row["budget"] for row in shown if row["model"] != "teacher"}, key=float, reverse=True):
        lines += [
            f"#### {float(budget):.0%} of the teacher's FLOPs (healed models; 95% intervals)",
            "",
            "| model | family | seed | FLOPs | parameters | top-1 % | agreement % | KL |",
            "|---|---|---|---|---|---|---|---|",
        ]
        members = [row for row in shown if row["budget"] == budget or row["model"] == "teacher"]
        for row in sorted(members, key=lambda row: (row["model"] != "teacher", -float(row["top1"] or 0))):
            kl = f"{float(row['kl_from_teacher']):.3f}" if row.get("kl_from_teacher") else ""
            lines.append(
                f"| {row['model']} | {row['family']} | {row['seed']} | {float(row['flops_share']):.1%} | "
                f"{int(row['parameters']):,} | {_points(row, 'top1')} | {_points(row, 'agree_top1')} | {kl} |"
            )
        lines.append("")
    return "\n".join(lines)


def comparisons_markdown(rows: list[dict]) -> str:
    """The study's paired comparisons: first - second in points with the 95% interval (``*``: excludes 0)."""
    lines = [
        "| budget | first | second | seed | sentences | top-1 difference | agreement difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {float(row['budget']):.0%} | {row['first']} | {row['second']} | {row['seed']} | {row['sentences']} "
            f"| {_difference(row, 'top1')} | {_difference(row, 'agree_top1')} |"
        )
    return "\n".join(lines) + "\n"


def study_markdown(data: Path) -> str:
    """The markdown tables of a study's data folder (``models.csv``, ``comparisons.csv``)."""
    models, comparisons = read_table(data / "models.csv"), read_table(data / "comparisons.csv")
    study = models[0]["study"] if models else data.name
    text = f"### Study {study}: models\n\n{models_markdown(models)}\n"
    if comparisons:
        text += f"### Study {study}: paired comparisons (points; * the interval excludes 0)\n\n"
        text += comparisons_markdown(comparisons)
    return text
