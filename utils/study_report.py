"""A study's results as data: one tidy table of its models (a row per model x evaluation x seed) and one of its
paired comparisons, from the evaluations its workflow wrote; and the markdown tables made from those files, so
that a page reporting the study (its report, docs/RESULTS.md) is generated from the committed CSVs."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from utils.checkpoint import kept_epoch
from utils.errors import UserError
from utils.evaluation import PER_SENTENCE, TEACHER
from utils.files import atomic_write
from utils.flops import run_flops, stage_flops
from utils.report import collect_results, compare_models, per_sentence_values
from utils.statistics import holm
from utils.storage import BlockRun, Storage, parse_ffn_run
from utils.study import (
    METHODS,
    TEST,
    VALIDATION,
    VARIANT_MARK,
    Plan,
    PlannedModel,
    healed_name,
    seed_folder,
    variant_name,
)

METRICS = ("top1", "top5", "top10", "agree_top1", "kl_from_teacher", "top1_vs_teacher")
MODEL_COLUMNS = (
    "study", "seed", "evaluation", "model", "family", "method", "side", "budget", "healing", "variant", "flops_share",
    "train_flops", "sentences", "parameters", "parameter_ratio", "flops_per_token", "shape", "recipe",
    *(f"{metric}{part}" for metric in METRICS for part in ("", "_low", "_high")),
    "latency_ms_b1", "latency_ms_b64", "masks",
)  # fmt: skip
COMPARISON_COLUMNS = (
    "study", "kind", "budget", "healing", "first", "second", "first_family", "second_family", "second_study",
    "candidates", "seed", "seeds", "sentences",
    *(f"{metric}_{part}" for metric in ("top1", "agree_top1") for part in ("difference", "low", "high")),
    "top1_excludes_zero", "agree_top1_excludes_zero", "top1_p_value", "top1_seed_spread",
    "holm_p", "holm_survives", "holm_confidence", "holm_low", "holm_high", "holm_tests",
    "first_share", "first_share_low", "first_share_high", "first_healing", "exploratory",
)  # fmt: skip
STUDENT_COLUMNS = (
    "study", "seed", "student", "block", "run", "epoch", "step", "loss_metric", "validation_loss", "replaced_top1",
    "teacher_top1", "train_seconds", "stopped_early", "kept", "variant",
)  # fmt: skip
STAGE_TIME_COLUMNS = (
    "study",
    "seed",
    "kind",
    "name",
    "seconds",
    "max_rss_mb",
    "mean_load",
    "cpu_seconds",
    "train_flops",
    "achieved_gflops",
    "share_of_fp32_peak",
    "share_of_bf16_peak",
)
STUDENT_LOSSES = ("block_mse", "ffn_mse", "merge_mse")  # each student kind's validation loss (utils/objectives.py)
BETWEEN_HEALINGS = " - "  # a comparison of two healings of one model: its healing column, "layerwise - kl"
ACROSS_HEALINGS = " / "  # two bests chosen over healings, each healed its own way: "layerwise / kl"
ALL_SEEDS = "all"  # the seed of a comparison over every seed (its interval resamples seeds and sentences)

logger = logging.getLogger(__name__)


def healings_of(first: str, second: str) -> str:
    """The healing column of a comparison of two models healed ``first`` and ``second``."""
    return first if first == second else f"{first}{ACROSS_HEALINGS}{second}"


def model_rows(plan: Plan) -> list[dict]:
    """Every evaluated model of the plan (each healing, and unhealed where evaluated) and the teacher (once per seed
    and evaluation: every variant evaluates it on the same masks), under every variant, seed and evaluation."""
    rows, teacher_rows = [], set()
    for variant, seed in plan.runs():
        models, healings = plan.variant_models(variant), plan.study.variants[variant].healing
        planned = {model.name: (model, "") for model in models}
        planned |= {model.healed(healing): (model, healing) for model in models for healing in healings}
        for result in collect_results(plan.storage(seed, variant)):
            row = {"study": plan.study.name, "seed": seed, "evaluation": result["evaluation"]}
            if result["model"] == "teacher":
                if (seed, result["evaluation"]) in teacher_rows:
                    continue
                teacher_rows.add((seed, result["evaluation"]))
                row |= {"model": "teacher", "family": "teacher", "method": "teacher", "side": "teacher", "budget": 1.0}
            elif result["model"] in planned:
                model, healing = planned[result["model"]]
                made_of = model.recipe or model.merged or model.learned
                row |= {"model": model.name, "family": model.family, "method": model.method, "budget": model.budget,
                        "side": METHODS[model.method].side, "healing": healing, "shape": json.dumps(model.shape),
                        "recipe": json.dumps(made_of, sort_keys=True), "variant": variant}  # fmt: skip
            else:
                continue  # another experiment's model in the same storage
            row["flops_share"] = result.get("flop_ratio")
            if result["model"] != "teacher" and healing:
                row["train_flops"] = training_flops(plan, seed, model, healing)
            rows.append(row | {key: result[key] for key in MODEL_COLUMNS if key in result and key not in row})
    return rows


TRAINING_KINDS = ("store", "attention_students", "ffn_students", "merge_students", "chain", "model", "heal")


def _stage_flops(plan: Plan, key: tuple[str, str, str]) -> dict[str, dict] | None:
    """What the runs of a stage counted (utils.flops: run folder -> epoch -> its FLOPs); None if missing."""
    path = plan.flops_file(key)
    return json.loads(path.read_text()) if path.exists() else None


def training_flops(plan: Plan, seed: int, model: PlannedModel, healing: str) -> float | None:
    """A healed model's training FLOPs from the teacher (the teacher's own training left out: every model shares
    it): every stage its build needs (the store, its students, the chain), each in full, as it would cost the model
    alone, and its own run of the ``healing`` heal stage. None when a stage that trains has no count (it ran
    before sitra counted FLOPs). A pruned model's calibration passes are not training and count nothing."""
    tag = seed_folder(seed, model.variant if plan.study.variants[model.variant].builds_apart else "")
    needed, todo = set(), [("model", tag, plan.built_name(model))]
    while todo:
        key = todo.pop()
        if key not in needed and key in plan.stages:
            needed.add(key)
            todo.extend(plan.stages[key].needs)
    total = 0.0
    for key in sorted(needed):
        if key[0] in TRAINING_KINDS:
            counted = _stage_flops(plan, key)
            if counted is None and key[0] == "model":  # a model built without training (CoFi's trains)
                continue
            if counted is None:
                return None
            total += sum(run_flops(run) for run in counted.values())
    healed = _stage_flops(plan, ("heal", seed_folder(seed, model.variant), healing)) or {}
    own = f"finetune_{plan.built_name(model)}"  # its run's folder, and the healing's variant after a "-"
    runs = [run for name, run in healed.items() if name == own or name.startswith(f"{own}-")]
    return total + run_flops(runs[0]) if len(runs) == 1 else None  # none, or several healings of it: not known


def student_rows(plan: Plan) -> list[dict]:
    """Every student's validation curve: a row per student run x finished epoch (epoch 0: before training), from
    the runs' ``metrics.jsonl`` under each seed's storage. ``student`` names the kind and shape, e.g.
    ``attention 6x32-init_heads``, ``feed-forward 768-init_neurons``, ``merge 12x32-init_first``. ``kept``: the
    epoch is the one the run gives the stages after it (:func:`utils.storage.run_output`)."""
    rows = []
    built_in = {}  # the seed folders students are trained in: the study's own, and each variant's that builds apart
    for variant, seed in plan.runs():
        built_in.setdefault((seed, variant if plan.study.variants[variant].builds_apart else ""), None)
    for seed, variant in built_in:
        runs = plan.storage(seed, variant).runs
        for folder in sorted(runs.glob("*/metrics.jsonl")) if runs.is_dir() else []:
            student, block = _student_of(folder.parent.name)
            if student is None:
                continue
            kept = kept_epoch(folder.parent)
            for record in _records(folder):
                metric = next((key for key in STUDENT_LOSSES if key in record), None)
                if metric is None or "batches_done" in record:  # not a student's, or a partial epoch
                    continue
                rows.append({
                    "study": plan.study.name, "seed": seed, "student": student, "block": block,
                    "run": folder.parent.name, "epoch": record["epoch"], "step": record["step"],
                    "loss_metric": metric, "validation_loss": record[metric],
                    "replaced_top1": record.get("replaced_top1", record.get("merged_top1")),
                    "teacher_top1": record.get("teacher_top1"), "train_seconds": record.get("train_seconds", 0),
                    "stopped_early": bool(record.get("stopped_early")), "kept": record["epoch"] == kept,
                    "variant": variant,
                })  # fmt: skip
    return rows


def stage_time_rows(plan: Plan) -> list[dict]:
    """Each finished stage's wall seconds, peak memory, mean load and CPU seconds, as the engine benchmarked it
    (``{root}/benchmarks/{seed}/{kind}/{name}.tsv``)."""
    rows = []
    peak_file = plan.root / "data" / "matmul_peak.json"  # the workflow's peak stage, on a machine like the stages'
    peak = json.loads(peak_file.read_text())["gflops"] if peak_file.exists() else {}
    for path in sorted((plan.root / "benchmarks").rglob("*.tsv")):  # {seed}/{kind}/, a variant's under its name
        seed, kind = path.parent.parent.relative_to(plan.root / "benchmarks").as_posix(), path.parent.name
        counted = _stage_flops(plan, (kind, seed, path.stem))  # what its runs counted (utils.flops)
        flops = stage_flops(counted) if counted else None
        with open(path, newline="") as file:
            for record in csv.DictReader(file, delimiter="\t"):
                achieved = flops / float(record["s"]) / 1e9 if flops and float(record["s"]) else None  # over its wall
                rows.append({
                    "study": plan.study.name, "seed": seed, "kind": kind, "name": path.stem, "seconds": record["s"],
                    "max_rss_mb": record.get("max_rss"), "mean_load": record.get("mean_load"),
                    "cpu_seconds": record.get("cpu_time"), "train_flops": flops, "achieved_gflops": achieved,
                    **{f"share_of_{name}_peak": achieved / peak[name] if achieved and isinstance(peak.get(name), float)
                       else None for name in ("fp32", "bf16")},
                })  # fmt: skip
    return rows


_STUDENT_KINDS = {"block": "attention", "merge": "merge", "conditioned": "conditioned merge"}


def _student_of(name: str) -> tuple[str | None, int | None]:
    """The student (kind and shape) and block of a run folder's name; (None, None) for a run of another kind."""
    run = BlockRun.parse(name)
    if run is not None and run.kind in _STUDENT_KINDS:
        return f"{_STUDENT_KINDS[run.kind]} {run.heads}x{run.d_k}{run.variant}", run.block
    ffn = parse_ffn_run(name)
    if ffn is not None:
        block, width, variant = ffn
        return f"feed-forward {width}{variant}", block
    return None, None


def _student_named(row: dict) -> str:
    """A students.csv row's student, with the variant whose own students it is (one that builds apart) after an @."""
    return row["student"] + (f"{VARIANT_MARK}{row['variant']}" if row.get("variant") else "")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _compared(plan: Plan, first: PlannedModel, second: PlannedModel, healings: tuple[str, str], **row) -> list[dict]:
    """``first`` healed by ``healings[0]`` against ``second`` healed by ``healings[1]`` (each in its variant's seed
    folders) on the test masks: a row per seed under which both are evaluated (a study run in targets compares what
    it has) and, with several, one of both averaged over them, with the spread of the seeds' differences; that last
    row is the one the study reports (``reported``)."""
    names = first.healed(healings[0]), second.healed(healings[1])
    base = {"study": plan.study.name, "budget": first.budget, "first": first.name, "second": second.name,
            "first_family": first.family, "second_family": second.family, **row}  # fmt: skip
    variants = plan.study.variants
    seeds = [seed for seed in variants[first.variant].seeds if seed in variants[second.variant].seeds]
    evaluated = []  # per seed, where the first model is and where the second is
    for seed in seeds:
        storage, other = plan.storage(seed, first.variant), plan.storage(seed, second.variant)
        if per_sentence_values(storage, names[0], TEST) and per_sentence_values(other, names[1], TEST):
            evaluated.append((seed, storage, other))
    rows, (storages, against) = seed_by_seed(base, names, evaluated)
    if row.get("kind") == "best":  # the headline states sitra's best's share of the teacher
        with_teacher_share(rows, names[0], evaluated)
    if rows:  # what the Holm step needs to compare it again at its level
        rows[-1] |= {"reported": True, "names": names, "storages": storages, "against": against}
    return rows


def seed_by_seed(
    base: dict, names: tuple[str, str], evaluated: list[tuple]
) -> tuple[list[dict], tuple[list[Storage], list[Storage]]]:
    """``names[0]`` against ``names[1]`` on the test masks under each ``(seed, first's storage, second's)`` of
    ``evaluated``: a row (``base`` and the differences) per seed and, with several, one over them all (seeds and
    sentences resampled) with the spread of the seeds' differences; and the storages of the last row, the one a
    report states."""
    runs = [(seed, [storage], [second]) for seed, storage, second in evaluated]
    if len(evaluated) > 1:
        runs.append((ALL_SEEDS, [storage for _, storage, _ in evaluated], [second for _, _, second in evaluated]))
    rows = []
    for seed, where, against in runs:
        result = compare_models(where[0], *names, where[1:], TEST, against=against)
        entry = {**base, "seed": seed, "seeds": result["seeds"], "sentences": result["sentences"]}
        for metric in ("top1", "agree_top1"):
            entry |= {f"{metric}_{key}": value for key, value in (result.get(metric) or {}).items()}
        rows.append(entry)
    if len(rows) > 1:
        differences = [row["top1_difference"] for row in rows[:-1]]
        rows[-1]["top1_seed_spread"] = max(differences) - min(differences)
    return rows, (runs[-1][1], runs[-1][2]) if runs else ([], [])


def with_teacher_share(rows: list[dict], name: str, evaluated: list[tuple]) -> None:
    """Give each of :func:`seed_by_seed`'s ``rows`` its first model ``name``'s share of the teacher's test top-1
    (``first_share``, ``_low``, ``_high``), against the teacher on the same seeds and sentences, computed as its
    lead is: over several seeds, seeds and sentences resampled (an average of each seed's interval would leave the
    seeds' spread out)."""
    against_teacher, _ = seed_by_seed({}, (name, TEACHER), [(seed, at, at) for seed, at, _ in evaluated])
    for row, paired in zip(rows, against_teacher, strict=True):
        as_models_csv = {f"top1_vs_teacher{end}": paired[f"top1_{key}"]
                         for end, key in (("", "difference"), ("_low", "low"), ("_high", "high"))}  # fmt: skip
        share = _share_of_teacher(as_models_csv, paired["top1_second_mean"])
        row |= dict(zip(("first_share", "first_share_low", "first_share_high"), share, strict=True))


IntervalAt = Callable[[dict, float], tuple[float, float]]  # a comparison row, a confidence -> its top-1 interval


def holm_by_test(rows: list[dict], tests: list, interval_at: IntervalAt, unmeasured: int = 0) -> list[dict]:
    """Holm's correction of ``rows``' top-1 p-values over the distinct tests among them (``tests``: each row's, e.g.
    its two models and where their results are): one pair on the same results, reported under several kinds
    (declared, and each side's best), is one hypothesis and counts once. Each row gets its test's adjusted p, its
    Holm level, how many tests the family has (``holm_tests``) and the test's top-1 interval at that level
    (``holm_low``, ``holm_high``), which ``interval_at(row, confidence)`` computes once per test; ``rows`` back.
    ``unmeasured``: tests of the family with no result yet, each counted with p 1 (the family is what was declared,
    not what has run: the others' correction does not loosen as a declared test is left out)."""
    first_row = {}
    for row, test in zip(rows, tests, strict=True):
        first_row.setdefault(test, row)
    p_values = [float(row["top1_p_value"]) for row in first_row.values()] + [1.0] * unmeasured
    corrections = dict(zip(first_row, holm(p_values), strict=False))
    for test, correction in corrections.items():
        low, high = interval_at(first_row[test], correction["holm_confidence"])
        correction |= {"holm_tests": len(p_values), "holm_low": low, "holm_high": high}
    for row, test in zip(rows, tests, strict=True):
        row |= corrections[test]
    return rows


def comparison_rows(plan: Plan, rows: list[dict]) -> list[dict]:
    """The study's comparisons on the test masks, at every budget where both models exist, for every healing:
    ``declared``, the study's pairs of families; ``healing``, each model under each later healing against the
    first; ``best``, at each budget each side's best over its models and healings (sitra's methods against the
    field's) chosen by top-1 on the validation split (:func:`best_by_side`), among ``candidates``. Then Holm's
    correction over the comparisons reported (seed-averaged where there are several seeds), with each one's
    interval at its Holm level."""
    by_family = {(variant_name(model.family, model.variant), model.budget): model for model in plan.models}
    variants = plan.study.variants
    compared, declared_tests = [], []  # the declared tests the plan has models for: (kind, budget, healing, first)
    for first_family, second_family in plan.study.comparisons:  # "family", or "family@variant"
        first_healings = variants[first_family.partition(VARIANT_MARK)[2]].healing
        second_healings = variants[second_family.partition(VARIANT_MARK)[2]].healing
        for healing in [healing for healing in first_healings if healing in second_healings]:
            for budget in plan.study.budgets:
                pair = by_family.get((first_family, budget)), by_family.get((second_family, budget))
                if None not in pair:
                    declared_tests.append(("declared", budget, healing, pair[0].name, pair[1].name))
                    compared += _compared(plan, *pair, (healing, healing), kind="declared", healing=healing)
    if plan.study.compares_best:
        sides = {(METHODS[model.method].side, model.budget) for model in plan.models}
        declared_tests += [("best", budget) for budget in plan.study.budgets
                           if {("sitra", budget), ("field", budget)} <= sides]  # fmt: skip
    compared += _best_against_field(plan, rows)
    for model in plan.models:  # each later healing of a variant against its first, model by model
        healings = list(variants[model.variant].healing)
        for other in healings[1:]:
            compared += _compared(plan, model, model, (other, healings[0]), kind="healing",
                                  healing=f"{other}{BETWEEN_HEALINGS}{healings[0]}")  # fmt: skip
    # the Holm family: the comparisons the study file declares (its pairs, and each side's best where it says best);
    # any other a report states is exploratory, its p uncorrected
    declared = {"declared", "best"} if plan.study.compares_best else {"declared"}
    family = [row for row in compared if row.get("reported") and row["kind"] in declared]
    for row in compared:
        if row.get("reported") and row["kind"] not in declared:
            row["exploratory"] = True
    tests = [(row["names"], *(tuple(s.root for s in row[key]) for key in ("storages", "against"))) for row in family]
    measured = {("best", row["budget"]) if row["kind"] == "best"
                else (row["kind"], row["budget"], row["healing"], row["first"], row["second"])
                for row in family}  # fmt: skip
    unmeasured = len([test for test in declared_tests if test not in measured])
    holm_by_test(family, tests, lambda row, level: _top1_interval(row["names"], row["storages"], row["against"], level),
                 unmeasured)  # fmt: skip
    return compared


def _top1_interval(
    names: tuple[str, str], storages: list[Storage], against: list[Storage], confidence: float
) -> tuple[float, float]:
    """The paired top-1 interval of ``names[0] - names[1]`` on the test masks at ``confidence`` (the first model's
    results under ``storages``, the second's under ``against``, a storage per seed)."""
    top1 = compare_models(storages[0], *names, storages[1:], TEST, confidence, against=against)["top1"]
    return top1["low"], top1["high"]


def best_by_side(rows: list[dict], budget: float) -> dict[str, tuple[tuple[str, str, str], int]]:
    """Each side's best healed model at ``budget`` among ``rows`` (a study's models.csv), over every model, variant
    and healing: the highest validation top-1 averaged over the seeds every candidate at
    the budget has, so a model evaluated under more seeds is neither favoured nor hurt by them; of equal ones (the
    same stages run again under more seeds) the one with the most seeds, then the first. side -> ((study, model,
    healing), how many distinct candidates); a side without a candidate is absent."""
    validation: dict[tuple, dict[str, float]] = {}  # (side, study, model, healing) -> seed -> validation top-1
    for row in rows:
        if row["evaluation"] == VALIDATION and row.get("healing") and float(row["budget"]) == budget:
            key = row["side"], row["study"], row["model"], row["healing"]
            validation.setdefault(key, {})[str(row["seed"])] = float(row["top1"])
    if not validation:
        return {}
    common = set.intersection(*(set(top1) for top1 in validation.values()))
    if not common:
        raise UserError(f"budget {budget:g}: no seed that every model at it was evaluated under (the best is chosen "
                        "on them)")  # fmt: skip
    best = {}
    for side in ("sitra", "field"):
        scored = [(sum(top1[seed] for seed in common) / len(common), len(top1), key)
                  for key, top1 in validation.items() if key[0] == side]  # fmt: skip
        if scored:
            chosen = max(scored, key=lambda item: item[:2])[2]  # ties: the first's
            best[side] = chosen[1:], len({(score, key[2], key[3]) for score, _, key in scored})
    return best


def _best_against_field(plan: Plan, rows: list[dict]) -> list[dict]:
    """Each budget's best sitra model against its best field model, each chosen on validation over every model
    and healing (:func:`best_by_side`), compared on the test split."""
    by_name = {model.name: model for model in plan.models}
    compared = []
    for budget in plan.study.budgets:  # a variant's budgets are the study's
        best = best_by_side(rows, budget)
        if len(best) < 2:
            continue
        ((_, first, first_healing), first_count), ((_, second, second_healing), second_count) = (
            best["sitra"],
            best["field"],
        )
        healing = healings_of(first_healing, second_healing)
        compared += _compared(plan, by_name[first], by_name[second], (first_healing, second_healing), kind="best",
                              healing=healing, first_healing=first_healing,
                              candidates=f"{first_count} vs {second_count}")  # fmt: skip
    return compared


def write_table(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def write_study_data(plan: Plan) -> dict[str, Path]:
    """Under the study's ``data/``: ``students.csv`` (the students' validation curves) and its plot, and, once
    models are evaluated, ``models.csv`` and ``comparisons.csv``; ``report/study.md`` made from them. A study run in
    part so far (students only, say) writes what it has."""
    files, written = plan.data_files, {}
    students, models = student_rows(plan), model_rows(plan)
    if not students and not models:
        raise UserError(f"--study {plan.study.path}: no student or evaluation under {plan.root} yet (run the workflow)")
    study = plan.study
    about = {"study": study.name, "file": str(study.path), "seeds": study.seeds, "budgets": study.budgets,
             "goals": study.goals, "data": study.data, "healing": study.healing,
             "variants": {name: {"data": variant.data, "seeds": variant.seeds, "budgets": variant.budgets,
                                 "families": list(variant.families), "healing": variant.healing}
                          for name, variant in study.variants.items() if name}}  # fmt: skip
    files["about"].parent.mkdir(parents=True, exist_ok=True)
    atomic_write(files["about"], lambda tmp: tmp.write_text(json.dumps(about, indent=1) + "\n"))
    written["about"] = files["about"]
    if students:
        write_table(plan.students_data, students, STUDENT_COLUMNS)
        written["students"] = plan.students_data
        plot = plan.students_data.with_suffix(".png")
        curves = plot_student_curves(students, plot, study.data["train_sentences"])
        if curves is not None:
            written["students_plot"] = curves
        else:  # no student has trained two epochs: an earlier plot of other runs would mislead
            plot.unlink(missing_ok=True)
    stage_times = stage_time_rows(plan)
    if stage_times:
        write_table(plan.root / "data" / "stage_times.csv", stage_times, STAGE_TIME_COLUMNS)
        written["stage_times"] = plan.root / "data" / "stage_times.csv"
    if models:
        check_preregistered(plan)
        written["raw"] = copy_raw_results(plan)
        write_table(files["models"], models, MODEL_COLUMNS)
        write_table(files["comparisons"], comparison_rows(plan, models), COMPARISON_COLUMNS)
        written |= {name: files[name] for name in ("models", "comparisons")}
        frontier = plot_study_frontier(read_table(files["models"]), files["models"].parent / "frontier.png")
        if frontier is not None:
            written["frontier"] = frontier
        compute = plot_study_compute(read_table(files["models"]), files["models"].parent / "compute.png")
        if compute is not None:
            written["compute"] = compute
    page = plan.root / "report" / "study.md"
    text = study_markdown(files["models"].parent)
    page.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(page, lambda tmp: tmp.write_text(text))
    return {**written, "page": page}


RAW_FILES = ("metrics.json", PER_SENTENCE)  # an evaluation's figures and per-sentence outcomes (utils.evaluation)


def study_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_preregistered(plan: Plan) -> None:
    """Refuse test results opened under another version of the study file: the workflow appends the study file's
    SHA-256 to ``openings/{seed}/test.log`` each time it opens a seed's test split, and a study whose file changed
    since (a comparison, a goal or a model added after the test split was read) is not the study that was run.
    Results with no such log (made before the workflow kept one, or copied from elsewhere) are said, not refused."""
    logs = sorted(path for path in (plan.openings(seed_folder(seed, variant)) for variant, seed in plan.runs())
                  if path.exists())  # fmt: skip
    if not logs:
        logger.warning("%s: no record of when the test split was opened (openings/): not checked", plan.root)
        return
    now = study_hash(plan.study.path)
    for log in logs:
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) != 2 or len(fields[1]) != 64:  # the workflow writes "time sha256"
                raise UserError(f"{log}: '{line}' is not a record of an opening (time, then the study's SHA-256)")
            opened, recorded = fields
            if recorded != now:
                raise UserError(
                    f"{plan.study.path}: changed since {log.parent.name}'s test split was opened under it ({opened}; "
                    f"{log}): its test results are not this study's; restore the study file, or run the change as "
                    "a new study with fresh seeds"
                )


def copy_raw_results(plan: Plan) -> Path:
    """Every seed's study evaluations (validation, test) as the evaluations wrote them, under ``data/raw/`` in the
    root's own layout (``seed42/results/test/per_sentence.npz``): committed beside the tables, they are the raw
    results, and copied into a root (``cp -r data/raw/. ROOT``) they give :func:`write_study_data` all it reads of
    the seeds' evaluations and the FLOPs each stage counted (``flops/seed42/heal/kl.json``), on a machine where the
    models and the rest of the root are gone."""
    raw = plan.root / "data" / "raw"
    sources = [plan.storage(seed, variant).results(evaluation) / name for variant, seed in plan.runs()
               for evaluation in (VALIDATION, TEST) for name in RAW_FILES]  # fmt: skip
    sources += [plan.flops_file(key) for key in sorted(plan.stages)]
    sources += [plan.openings(seed_folder(seed, variant)) for variant, seed in plan.runs()]
    for source in sources:
        if source.is_file():
            target = raw / source.relative_to(plan.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, lambda tmp, source=source: shutil.copyfile(source, tmp))
    return raw


SEED_LINE_STYLES = ("-", "--", ":", "-.")  # one per seed, in the order of the seeds


def _saved(figure, path: Path) -> Path | None:
    """``figure`` written to ``path`` (None, and nothing written, where there was nothing to draw)."""
    if figure is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def plot_student_curves(rows: list[dict], path: Path, sentences: int | None = None) -> Path | None:
    """:func:`student_curves_figure` saved at ``path`` (None, and nothing written, without a curve to draw)."""
    return _saved(student_curves_figure(rows, sentences), path)


def student_curves_figure(rows: list[dict], sentences: int | None = None):
    """One panel per student (kind and shape) trained more than one epoch (None without any: a curve relative to
    epoch 1 needs a second): its validation loss after each epoch relative to the loss after epoch 1, a line per
    block (one colour in every panel) and seed (one line style), a circle where the stopping rule ended it, a star
    at the epoch it keeps. ``sentences``: the training sentences of an epoch (None: all)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    runs: dict[str, dict[tuple, list[dict]]] = {}
    for row in rows:
        if int(row["epoch"]) >= 1:  # a student only evaluated before training has no curve yet
            runs.setdefault(_student_named(row), {}).setdefault((row["seed"], int(row["block"])), []).append(row)
    curves = {student: by_block for student, by_block in runs.items()
              if any(len(records) > 1 for records in by_block.values())}  # fmt: skip
    if not curves:
        return None
    # a block is one colour in every panel, a seed one line style: one legend for the figure, under the panels
    blocks = sorted({block for by_block in curves.values() for _, block in by_block})
    seeds = sorted({seed for by_block in curves.values() for seed, _ in by_block})
    palette = colormaps["tab10" if len(blocks) <= 10 else "tab20"].colors  # bert-base has 12 blocks
    colour = {block: palette[index % len(palette)] for index, block in enumerate(blocks)}
    style = {seed: SEED_LINE_STYLES[index % len(SEED_LINE_STYLES)] for index, seed in enumerate(seeds)}
    columns = min(3, len(curves))
    lines = -(-len(curves) // columns)
    figure = Figure(figsize=(4.6 * columns, 3.2 * lines + 0.8), layout="constrained")
    for axes, student in zip(figure.subplots(lines, columns, squeeze=False).flat, sorted(curves), strict=False):
        for (seed, block), records in sorted(curves[student].items()):
            records = sorted(records, key=lambda r: int(r["epoch"]))
            first = float(records[0]["validation_loss"])
            epochs = [int(r["epoch"]) for r in records]
            relative = [float(r["validation_loss"]) / first for r in records]
            axes.plot(epochs, relative, marker=".", color=colour[block], linestyle=style[seed])
            if _truthy(records[-1]["stopped_early"]):
                axes.plot(epochs[-1], relative[-1], "o", color=colour[block], markersize=7, fillstyle="none")
            for epoch, value, record in zip(epochs, relative, records, strict=True):
                if _truthy(record.get("kept")):
                    axes.plot(epoch, value, "*", color=colour[block], markersize=9)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(student, fontsize=10)
        axes.set_xlabel(f"epoch ({f'{sentences:,}' if sentences else 'all'} training sentences each)")
        axes.set_ylabel("validation loss / after epoch 1")
        axes.grid(alpha=0.3)
    for axes in list(figure.axes)[len(curves) :]:
        axes.set_visible(False)
    handles = [Line2D([], [], color=colour[block], marker=".", label=f"block {block}") for block in blocks]
    if len(seeds) > 1:
        handles += [Line2D([], [], color="0.3", linestyle=style[seed], label=f"seed {seed}") for seed in seeds]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    figure.suptitle(
        "Students' validation loss per epoch\nopen circle: where the stopping rule ended the run\nstar: the epoch kept",
        fontsize=10,
    )
    return figure


HEALING_MARKERS = ("o", "^", "s", "D", "v")  # one marker per healing, in the study's order


def plot_study_compute(models: list[dict], path: Path) -> Path | None:
    """:func:`study_compute_figure` saved at ``path`` (None, and nothing written, without a counted model)."""
    return _saved(study_compute_figure(models), path)


def study_compute_figure(models: list[dict]):
    """Each healed model's validation top-1 (a share of the teacher's; the split choices are made on) against its
    training FLOPs from the teacher (log scale): a panel per budget, sitra's models filled blue, the field's open
    red, a marker per healing, each point the mean over the seeds counted. Where sitra's points sit right of the
    field's at equal height, its lead is bought with compute."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter, PercentFormatter

    rows = [row for row in models if row["evaluation"] == VALIDATION]
    teacher = {row["seed"]: float(row["top1"]) for row in rows if row["model"] == "teacher"}
    points: dict[tuple, list[tuple[float, float]]] = {}
    for row in rows:
        if row["healing"] and row.get("train_flops") and teacher.get(row["seed"]):
            key = (float(row["budget"]), row["side"], row["healing"], row["model"])
            points.setdefault(key, []).append((float(row["train_flops"]), float(row["top1"]) / teacher[row["seed"]]))
    if not points:
        return None
    budgets = sorted({key[0] for key in points}, reverse=True)
    healings = sorted({key[2] for key in points})
    figure = Figure(figsize=(3.6 * len(budgets) + 1, 4.2), layout="constrained")
    axes_row = np.atleast_1d(figure.subplots(1, len(budgets), sharey=True))
    for axes, budget in zip(axes_row, budgets, strict=True):
        for (at, side, healing, _model), values in sorted(points.items()):
            if at != budget:
                continue
            flops, share = np.mean(values, axis=0)
            marker = HEALING_MARKERS[healings.index(healing) % len(HEALING_MARKERS)]
            axes.plot(flops, share, marker, color="C0" if side == "sitra" else "C3", markersize=7,
                      fillstyle="full" if side == "sitra" else "none", label=f"{side}, healed {healing}")  # fmt: skip
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5 P: readable within a decade
        axes.xaxis.set_major_formatter(EngFormatter(places=0))
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.margins(x=0.2, y=0.15)  # no point on a frame
        axes.set_title(f"{budget:.0%} of the FLOPs")
        axes.set_xlabel("training FLOPs from the teacher (T, P: 10¹², 10¹⁵)")
        axes.grid(alpha=0.3)
    axes_row[0].set_ylabel("validation top-1, share of the teacher's")
    axes_row[0].yaxis.set_major_formatter(PercentFormatter(1.0))
    labelled = dict(zip(*reversed(axes_row[0].get_legend_handles_labels()), strict=True))
    axes_row[0].legend(labelled.values(), labelled.keys(), fontsize=8, loc="lower right")
    return figure


def plot_study_frontier(models: list[dict], path: Path) -> Path | None:
    """:func:`study_frontier_figure` saved at ``path`` (None, and nothing written, without a healed model)."""
    return _saved(study_frontier_figure(models), path)


def study_frontier_figure(models: list[dict]):
    """The test split's top-1 as a share of the teacher's against the share of its FLOPs: one colour per family
    (sitra's families blue-green, the field's warm), one marker per healing, each point the mean over the seeds
    with the seeds' range as its bar; the budgets as dotted guides. No point is labelled (the legend names the
    families), so no label can cross another or a guide. The percent ticks take as many decimals as their spacing
    needs (a part at one budget spans a few points of the teacher's top-1)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    tests = [row for row in models if row["evaluation"] == TEST]
    teacher = {row["seed"]: float(row["top1"]) for row in tests if row["model"] == "teacher"}
    points: dict[tuple, list[float]] = {}
    shares: dict[tuple, float] = {}
    for row in tests:
        if row["model"] == "teacher" or not row["healing"] or not teacher.get(row["seed"]):
            continue
        key = (row["family"], row["side"], row["healing"], row["model"])
        points.setdefault(key, []).append(float(row["top1"]) / teacher[row["seed"]])
        shares[key] = float(row["flops_share"])
    if not points:
        return None
    families = sorted({(family, side) for family, side, _, _ in points}, key=lambda item: (item[1] != "sitra", item))
    sitra_colours, field_colours = iter(("C0", "C2", "C9", "C4", "C8")), iter(("C3", "C1", "C6", "C5", "C7"))
    colours = {family: next(sitra_colours if side == "sitra" else field_colours) for family, side in families}
    healings = list(dict.fromkeys(row["healing"] for row in tests if row["healing"]))
    figure = Figure(figsize=(8.5, 5.2), layout="constrained")
    axes = figure.subplots()
    for budget in sorted({float(row["budget"]) for row in tests if row["model"] != "teacher"}):
        axes.axvline(budget, color="0.8", linestyle=":", zorder=0)
    for (family, side, healing, model), values in sorted(points.items()):
        mean = sum(values) / len(values)
        error = [[mean - min(values)], [max(values) - mean]]
        marker = HEALING_MARKERS[healings.index(healing) % len(HEALING_MARKERS)]
        axes.errorbar(shares[family, side, healing, model], mean, yerr=error, fmt=marker, color=colours[family],
                      markersize=7, capsize=2, fillstyle="full" if side == "sitra" else "none")  # fmt: skip
    axes.plot(1.0, 1.0, "*", color="black", markersize=12)
    handles = [
        axes.plot([], [], "o", color=colours[f], fillstyle="full" if s == "sitra" else "none")[0] for f, s in families
    ]
    labels = [f"{family} ({side})" for family, side in families]
    handles += [axes.plot([], [], HEALING_MARKERS[i % 5], color="0.3")[0] for i in range(len(healings))]
    labels += [f"healed: {healing}" for healing in healings]
    handles.append(axes.plot([], [], "*", color="black", markersize=10)[0])
    labels.append("teacher")
    axes.legend(handles, labels, loc="lower right", fontsize=8)
    axes.set_xlabel("share of the teacher's encoder FLOPs per token")
    axes.set_ylabel("test top-1, share of the teacher's")
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.grid(alpha=0.3)
    axes.set_title("Every healed model on the test split (mean over seeds; bars: the seeds' range)")
    return figure


def _truthy(value) -> bool:
    return value is True or str(value) == "True"


# -- tables from the data files -----------------------------------------------------------------------------------
def read_table(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"{path}: no such study data file (make_report.py --study writes it)")
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _given(row: dict, key: str) -> bool:
    """Whether a row (read from a CSV: strings; or computed: numbers) has ``key``; 0 and 0.0 are values."""
    return row.get(key) not in (None, "")


def _points(row: dict, metric: str) -> str:
    """``27.10 [26.20, 28.00]``: a share as percent with its 95% interval."""
    if not _given(row, metric):
        return ""
    value, low, high = (100 * float(row[f"{metric}{part}"] or "nan") for part in ("", "_low", "_high"))
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def _difference(row: dict, metric: str, interval: str = "") -> str:
    """A paired difference in points with its interval (``holm``: the interval at the row's Holm level)."""
    if not _given(row, f"{metric}_difference") or (interval and not _given(row, "holm_low")):
        return ""  # (an exploratory comparison has no Holm level)
    low, high = (f"holm_{end}" if interval else f"{metric}_{end}" for end in ("low", "high"))
    value, low, high = (100 * float(row[key]) for key in (f"{metric}_difference", low, high))
    return f"{value:+.2f} [{low:+.2f}, {high:+.2f}]"


def _reported(rows: list[dict]) -> list[dict]:
    """The comparisons a report states: averaged over the seeds where there are several, else the one seed; those
    the study declared (Holm-corrected), then the exploratory ones."""
    declared = [row for row in rows if _given(row, "holm_p")]
    return declared + [row for row in rows if _truthy(row.get("exploratory")) and not _given(row, "holm_p")]


def _teacher_top1(models: list[dict]) -> dict[str, float]:
    """seed -> the teacher's test top-1."""
    teachers = [row for row in models if row["model"] == "teacher" and row["evaluation"] == TEST]
    return {row["seed"]: float(row["top1"]) for row in teachers}


def _share_of_teacher(row: dict, teacher_top1: float) -> tuple[float, float, float]:
    """A model's test top-1 as a share of the teacher's (same seed), with the interval of its paired difference."""
    return tuple(
        1 + float(row[key]) / teacher_top1 if teacher_top1 else math.nan
        for key in ("top1_vs_teacher", "top1_vs_teacher_low", "top1_vs_teacher_high")
    )


def models_markdown(rows: list[dict]) -> str:
    """One table per budget: every healed model on the test split (each seed a row) with its share of the teacher's
    top-1 (paired interval), and its validation top-1."""
    validation = {(row["model"], row["healing"], row["seed"]): row for row in rows if row["evaluation"] == VALIDATION}
    shown = [row for row in rows if row["evaluation"] == TEST and (row["healing"] or row["model"] == "teacher")]
    teacher = _teacher_top1(rows)
    lines = []
    for budget in sorted({row["budget"] for row in shown if row["model"] != "teacher"}, key=float, reverse=True):
        lines += [
            f"#### {float(budget):.0%} of the teacher's FLOPs (healed; test split, 95% intervals)",
            "",
            "| model | healing | seed | FLOPs | parameters | top-1 % | % of the teacher's top-1 (paired) | "
            "agreement % | KL | validation top-1 % |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        members = [row for row in shown if row["budget"] == budget or row["model"] == "teacher"]
        for row in sorted(members, key=lambda row: (row["model"] != "teacher", -float(row["top1"] or 0))):
            kl = f"{float(row['kl_from_teacher']):.3f}" if row.get("kl_from_teacher") else ""
            chosen_on = validation.get((row["model"], row["healing"], row["seed"]), {})
            share = ""
            if row["model"] != "teacher" and row.get("top1_vs_teacher"):
                share = "{:.1%} [{:.1%}, {:.1%}]".format(*_share_of_teacher(row, teacher.get(row["seed"], 0)))
            lines.append(
                f"| {row['model']} | {row['healing']} | {row['seed']} | {float(row['flops_share']):.1%} | "
                f"{int(row['parameters']):,} | {_points(row, 'top1')} | {share} | {_points(row, 'agree_top1')} | "
                f"{kl} | {_points(chosen_on, 'top1')} |"
            )
        lines.append("")
    return "\n".join(lines)


def healed_names(row: dict) -> tuple[str, str]:
    """The two healed models a comparison row compares: each healed by the row's ``healing``; in a comparison of
    healings (``later - first``, as :func:`comparison_rows` names it) the first model by each; of two bests chosen
    over healings (``first / second``, :func:`healings_of`) each by its own."""
    healing = row["healing"]
    first, _, second = healing.partition(BETWEEN_HEALINGS if BETWEEN_HEALINGS in healing else ACROSS_HEALINGS)
    return healed_name(row["first"], first), healed_name(row["second"], second or first)


def _holm_cell(row: dict) -> str:
    """A comparison's Holm-adjusted p, bold where it survives; an exploratory one's p, uncorrected, said so."""
    if not _given(row, "holm_p"):
        return f"exploratory: p {float(row['top1_p_value']):.3g}, uncorrected"
    holm_p = f"{float(row['holm_p']):.3g}"
    return f"**{holm_p}**" if row["holm_survives"] in ("True", True) else holm_p


def comparisons_markdown(rows: list[dict]) -> str:
    """The reported comparisons (first - second, top-1 points on the test split): the 95% interval, the spread of
    the seeds' differences, Holm's adjusted p over every comparison in the table and the interval at its level."""
    reported = _reported(rows)
    family = [row for row in reported if _given(row, "holm_p")]
    tests = family[0].get("holm_tests") if family else None  # absent from data written before 2026-12-03
    counted = f" ({tests} distinct tests: a pair on the same results, reported under several kinds, counts once)"
    explored = len(reported) - len(family)
    lines = [
        f"{len(family)} comparisons{counted if tests and int(tests) < len(family) else ''}, Holm-corrected "
        "together; **bold**: survives (adjusted p < 0.05)."
        + (
            f" {explored} exploratory (not declared in the study file): p uncorrected, no Holm level."
            if explored
            else ""
        ),
        "",
        "| kind | budget | healing | first | second | candidates | seeds | top-1 difference, 95% | seed spread | "
        "Holm p | at its Holm level | agreement difference |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in reported:
        spread = f"{100 * float(row['top1_seed_spread']):.2f}" if _given(row, "top1_seed_spread") else ""
        holm_p = _holm_cell(row)
        lines.append(
            f"| {row['kind']} | {float(row['budget']):.0%} | {row['healing']} | {_named(row, 'first')} | "
            f"{_named(row, 'second')} | "
            f"{row.get('candidates') or ''} | {row['seeds']} | {_difference(row, 'top1')} | {spread} | {holm_p} | "
            f"{_difference(row, 'top1', 'holm')} | {_difference(row, 'agree_top1')} |"
        )
    return "\n".join(lines) + "\n"


def seeds_markdown(rows: list[dict]) -> str:
    """Each comparison reported over several seeds, seed by seed: each seed's difference with its interval over
    sentences, the seeds' spread, and the difference over every seed with its interval resampling seeds as well
    as sentences (and Holm's adjusted p, over every comparison the study reports)."""
    pooled = [row for row in _reported(rows) if row["seed"] == ALL_SEEDS]
    if not pooled:
        return "No comparison over several seeds yet.\n"
    # a comparison, whichever study's models it names (a table written before 2026-12-08 may hold several)
    identity = ("kind", "budget", "healing", "study", "first", "second_study", "second")
    per_seed = {}  # comparison -> seed -> row
    for row in rows:
        if row["seed"] != ALL_SEEDS:
            per_seed.setdefault(tuple(str(row.get(key) or "") for key in identity), {})[str(row["seed"])] = row
    seeds = sorted({seed for found in per_seed.values() for seed in found})
    lines = [
        "| kind | budget | healing | first | second | "
        + " | ".join(f"seed {seed}" for seed in seeds)
        + " | seed spread | every seed (seeds and sentences resampled) | Holm p |",
        "|---" * (len(seeds) + 8) + "|",
    ]
    for row in pooled:
        found = per_seed.get(tuple(str(row.get(key) or "") for key in identity), {})
        cells = [_difference(found[seed], "top1") if seed in found else "" for seed in seeds]
        holm_p = _holm_cell(row)
        lines.append(
            f"| {row['kind']} | {float(row['budget']):.0%} | {row['healing']} | {_named(row, 'first')} | "
            f"{_named(row, 'second')} | " + " | ".join(cells) + f" | {100 * float(row['top1_seed_spread']):.2f} | "
            f"{_difference(row, 'top1')} | {holm_p} |"
        )
    return "\n".join(lines) + "\n"


def headline_markdown(
    models: list[dict],
    comparisons: list[dict],
    goals: dict[float, float],
    budgets: list[float] = (),
    seeds: int = 0,
    kind: str = "best",
) -> str:
    """The first screen: per budget, sitra's best (chosen on validation, over every variant and healing; ``kind``:
    the comparisons of each side's best) with its share of the teacher's test top-1 and that share's paired interval
    (over its comparison's seeds and resampling them, as its lead), against the field's best (Holm-marked), the goal;
    each of ``budgets`` not measured yet is a row that says so, and a comparison over fewer than the study's
    ``seeds`` says over how many."""
    teacher = _teacher_top1(models)
    lines = [
        "| budget | sitra's best (chosen on validation) | % of the teacher's top-1 | sitra's best − the field's best "
        "(top-1 points, 95%; Holm) | goal (on the lower 95% bound) |",
        "|---|---|---|---|---|",
    ]
    best = [row for row in _reported(comparisons) if row["kind"] == kind]
    measured = {float(row["budget"]) for row in best}
    for budget in sorted(measured | {float(budget) for budget in budgets}, reverse=True):
        if budget not in measured:
            goal = goals.get(budget)
            lines.append(f"| {budget:.0%} | not measured yet | | | {f'{goal:.0%}: not yet' if goal else 'none set'} |")
            continue
        # one best per budget; in a table written before 2026-12-05 one per healing: the higher on validation
        row = max((row for row in best if float(row["budget"]) == budget), key=lambda row: _validation(models, row))
        if _given(row, "first_share"):  # from the per-sentence results, over the row's seeds
            share, low, high = (float(row[f"first_share{end}"]) for end in ("", "_low", "_high"))
            shown = f"{share:.1%} [{low:.1%}, {high:.1%}]"
        else:  # a table written before 2026-12-05: the share under each seed from models.csv
            tests = [m for m in _first_model(models, row) if m["evaluation"] == TEST]
            shares = [_share_of_teacher(m, teacher[m["seed"]]) for m in tests]
            share = sum(found[0] for found in shares) / len(shares)
            # over several seeds, an average of each seed's interval would leave their spread out: none is shown
            shown = "{:.1%} [{:.1%}, {:.1%}]".format(*shares[0]) if len(shares) == 1 else f"{share:.1%} (seed mean)"
            low = shares[0][1] if len(shares) == 1 else None
        verdict = goal_verdict(goals.get(float(budget)), share, low)
        if not _given(row, "holm_p"):
            survives = f"exploratory: not a declared comparison, p {float(row['top1_p_value']):.3g} uncorrected"
        else:
            survives = "survives Holm" if row["holm_survives"] in ("True", True) else "not after Holm"
        if _given(row, "holm_low"):  # the interval at its Holm level, which excludes 0 where the win survives
            at_level = (100 * float(row[f"holm_{end}"]) for end in ("low", "high"))
            survives += "; [{:+.2f}, {:+.2f}] at its level".format(*at_level)
        chosen = row["healing"] + (f"; {row['first_study']}" if row.get("first_study") else "")
        chosen += f"; {row['seeds']} of {seeds} seeds" if int(row["seeds"]) < seeds else ""
        second = _named(row, "second") if row.get("second_study") != row.get("first_study") else row["second"]
        lines.append(
            f"| {float(budget):.0%} | {row['first']} ({chosen}) | {shown} | "
            f"{_difference(row, 'top1')} vs {second} ({survives}) | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def goal_verdict(goal: float | None, share: float, low: float | None) -> str:
    """A budget's goal (a share of the teacher's test top-1) judged on the lower 95% bound of its best model's share:
    met only where the bound reaches it (a point estimate above a goal its interval does not clear is not a goal
    met); ``low`` None (several seeds in a table written before 2026-12-05): judged on the point estimate, said so."""
    if goal is None:
        return "none set"
    if math.isnan(share):
        return ""
    if low is None:
        return f"{goal:.0%}: " + ("met" if share >= goal else f"missed by {goal - share:.1%}") + " (point estimate)"
    if low >= goal:
        return f"{goal:.0%}: met (lower bound {low:.1%})"
    return f"{goal:.0%}: not met (lower bound {low:.1%}" + ("; point estimate above it)" if share >= goal else ")")


def _named(row: dict, which: str) -> str:
    """The first or second model of a comparison, with its study where the row names it (another study's)."""
    study = row.get(f"{which}_study")
    return f"{row[which]} ({study})" if study else row[which]


def _first_model(models: list[dict], comparison: dict) -> list[dict]:
    """The rows of a comparison's first model, healed as it is compared, of its study (every evaluation, seed)."""
    healing = comparison.get("first_healing") or comparison["healing"]
    return [m for m in models if m["model"] == comparison["first"] and m["healing"] == healing
            and m["study"] == comparison["study"]]  # fmt: skip


def _validation(models: list[dict], comparison: dict) -> float:
    values = [float(m["top1"]) for m in _first_model(models, comparison) if m["evaluation"] == VALIDATION]
    return sum(values) / len(values) if values else float("-inf")


def study_about(data: Path) -> dict:
    """What a study's data folder says of the study as planned (``study.json``, beside its tables): ``goals``
    (budget -> share), ``budgets`` and ``seeds``; empty where it has none."""
    about = data / "study.json"
    plan = json.loads(about.read_text()) if about.is_file() else {}
    goals = {float(budget): share for budget, share in plan.get("goals", {}).items()}
    return {"goals": goals, "budgets": plan.get("budgets", []), "seeds": len(plan.get("seeds", []))}


def study_markdown(data: Path) -> str:
    """The markdown tables of a study's data folder: the headline (with the goals of its ``study.json``), the
    comparisons and every model (``models.csv``, ``comparisons.csv``), then the students' training
    (``students.csv``); what the study has not written yet is left out."""
    if not any((data / f"{name}.csv").is_file() for name in ("models", "students")):
        read_table(data / "models.csv")  # the error naming the missing file
    text = ""
    if (data / "models.csv").is_file():
        models, comparisons = read_table(data / "models.csv"), read_table(data / "comparisons.csv")
        study = models[0]["study"] if models else data.name
        about = study_about(data)
        if any(row["kind"] == "best" for row in comparisons):
            headline = headline_markdown(models, comparisons, about["goals"], seeds=about["seeds"])
        else:  # e.g. a study of one side's families
            headline = "No budget has a model of both sides (sitra's and the field's) here.\n"
        text = f"### Study {study}: each budget's best\n\n{headline}\n"
        if comparisons:
            text += f"### Study {study}: paired comparisons\n\n{comparisons_markdown(comparisons)}\n"
        text += f"### Study {study}: every model\n\n{models_markdown(models)}\n"
    if (data / "students.csv").is_file():
        students = read_table(data / "students.csv")
        study = students[0]["study"] if students else data.name
        text += f"### Study {study}: the students' training\n\n{students_markdown(students)}\n"
    return text


def students_markdown(rows: list[dict]) -> str:
    """Per student (kind and shape) and block: the epochs trained and why it stopped, the epoch kept (its lowest
    validation loss: what the models are built from), its validation loss after epoch 1 and at the kept epoch (and
    how much lower), the layer-replaced top-1 after epoch 1 and at the kept epoch, and the training minutes."""
    runs: dict[tuple, list[dict]] = {}
    for row in rows:
        runs.setdefault((_student_named(row), int(row["block"]), row["seed"]), []).append(row)
    lines = [
        "| student | block | seed | epochs | ended by | kept | validation loss, epoch 1 → kept | lower by | "
        "top-1 with it, epoch 1 → kept | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (student, block, seed), records in sorted(runs.items()):
        records = sorted(records, key=lambda r: int(r["epoch"]))
        trained = [r for r in records if int(r["epoch"]) >= 1]
        if not trained:
            continue
        first, last = trained[0], trained[-1]
        kept = next((r for r in records if _truthy(r.get("kept"))), last)
        loss_first, loss_kept = float(first["validation_loss"]), float(kept["validation_loss"])
        top1 = (
            f"{100 * float(first['replaced_top1']):.2f} → {100 * float(kept['replaced_top1']):.2f}"
            if first.get("replaced_top1")
            else ""
        )
        minutes = sum(float(r["train_seconds"] or 0) for r in trained) / 60
        ended = "the rule" if _truthy(last["stopped_early"]) else "the cap (or still running)"
        lines.append(
            f"| {student} | {block} | {seed} | {len(trained)} | {ended} | {kept['epoch']} | "
            f"{loss_first:.4g} → {loss_kept:.4g} | {1 - loss_kept / loss_first:.1%} | {top1} | {minutes:.1f} |"
        )
    return "\n".join(lines) + "\n"
