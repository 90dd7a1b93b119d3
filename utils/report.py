"""The report of a storage directory: every evaluation collected into rows, paired comparisons on the same masks,
seeds pooled, budget tables and plots (matplotlib's object API: no pyplot, no display needed).
make_report.py parses the flags and calls :func:`write_report` or :func:`compare_and_save`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from models import DROP, MERGE_INIT, STUDENT_INIT
from utils.checkpoint import RunDirectory
from utils.errors import UserError
from utils.evaluation import PER_SENTENCE, markdown_table
from utils.files import atomic_write
from utils.statistics import paired_difference
from utils.storage import Storage


def _figure(rows: int = 1, columns: int = 1, figsize=(7, 4.5)):
    """A figure and its axes, as pyplot.subplots gives them."""
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, columns)


def per_sentence_values(storage: Storage, model: str) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    """masks fingerprint -> (evaluation, metric -> per-sentence values) of every evaluation of ``model``."""
    found = {}
    for metrics_file in storage.all_results:
        arrays_file = metrics_file.parent / PER_SENTENCE
        if not arrays_file.exists():
            continue
        with np.load(arrays_file) as arrays:
            values = {key.split("/", 1)[1]: arrays[key] for key in arrays.files if key.split("/", 1)[0] == model}
        if values:
            masks = json.loads(metrics_file.read_text()).get("masks")
            found.setdefault(masks, (metrics_file.parent.name, values))
    return found


def compare_models(storage: Storage, first: str, second: str) -> dict:
    """Paired differences ``first - second`` on the masks both were evaluated on."""
    a, b = per_sentence_values(storage, first), per_sentence_values(storage, second)
    shared = [masks for masks in a if masks in b]
    if not shared:
        missing = [name for name, found in ((first, a), (second, b)) if not found]
        why = f"no evaluation of {', '.join(missing)}" if missing else "they were never evaluated on the same masks"
        raise UserError(f"--compare {first} {second}: {why} (run both through an evaluation with the same data flags)")
    (evaluation_a, values_a), (evaluation_b, values_b) = a[shared[0]], b[shared[0]]
    result = {
        "first": first,
        "second": second,
        "evaluations": [evaluation_a, evaluation_b],
        "sentences": len(values_a["top1"]),
    }
    for key in ("top1", "agree_top1"):
        if key in values_a and key in values_b:
            result[key] = paired_difference(values_a[key], values_b[key])
    return result


def collect_results(storage: Storage) -> list[dict]:
    rows = []
    for path in storage.all_results:
        report = json.loads(path.read_text())
        for model, values in report.get("models", {}).items():
            rows.append(
                {
                    "evaluation": path.parent.name,
                    "model": model,
                    "sentences": report.get("sentences"),
                    "masks": report.get("masks"),
                    **values,
                }
            )
    return rows


POOLED = ("top1", "top5", "agree_top1", "kl_from_teacher", "top1_vs_teacher")


def pool_seeds(runs: list[list[dict]]) -> list[dict]:
    """Rows of models found in several of ``runs`` (the rows of one storage directory each, i.e. one seed)
    on the same test masks: mean, sample standard deviation, min and max of each metric across seeds."""
    by_model: dict[tuple[str, str], list[dict]] = {}
    for rows in runs:
        latest = {(row["model"], row.get("masks")): row for row in rows if row["model"] != "teacher"}
        for key, row in latest.items():
            by_model.setdefault(key, []).append(row)
    pooled = []
    for (model, masks), rows in by_model.items():
        if len(rows) < 2:
            continue
        entry = {"model": model, "seeds": len(rows), "masks": masks, "sentences": rows[0].get("sentences")}
        for key in POOLED:
            values = np.array([row[key] for row in rows if key in row], dtype=float)
            if len(values) == len(rows):
                entry |= {f"{key}_mean": values.mean(), f"{key}_std": values.std(ddof=1)}
                entry |= {f"{key}_min": values.min(), f"{key}_max": values.max()}
        pooled.append(entry)
    return pooled


def seeds_table(pooled: list[dict]) -> str:
    """Markdown: mean ± standard deviation across seeds [min, max], in percent (KL in nats)."""
    shown = [key for key in POOLED if any(f"{key}_mean" in row for row in pooled)]
    lines = ["| model | seeds | " + " | ".join(shown) + " |", "|---" * (len(shown) + 2) + "|"]
    for row in sorted(pooled, key=lambda row: row["model"]):
        cells = []
        for key in shown:
            scale, unit = (1, "") if key.startswith("kl") else (100, "%")
            if f"{key}_mean" not in row:
                cells.append("")
                continue
            mean, std, low, high = (scale * row[f"{key}_{part}"] for part in ("mean", "std", "min", "max"))
            cells.append(f"{mean:.2f}{unit} ± {std:.2f} [{low:.2f}, {high:.2f}]")
        lines.append(f"| {row['model']} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def block_grid(storage: Storage) -> dict[tuple[int, str], dict[tuple[int, int], float]]:
    """(heads, variant) -> {(block, d_k): replaced_top1 of the last epoch}: variants are never mixed in one grid"""
    grid: dict[tuple[int, str], dict[tuple[int, int], float]] = {}
    for run, folder in storage.block_runs("block"):
        records = RunDirectory(folder, {}, 1).read_metrics()
        if not records:
            continue
        last = records[-1]
        if "replaced_top1" in last:
            grid.setdefault((run.heads, run.variant), {})[(run.block, run.d_k)] = last["replaced_top1"]
    return grid


def plot_heatmaps(grid, output: Path) -> list[Path]:
    paths = []
    for (heads, variant), values in sorted(grid.items()):
        blocks = sorted({block for block, _ in values})
        d_ks = sorted({d_k for _, d_k in values})
        table = [[values.get((block, d_k), float("nan")) for d_k in d_ks] for block in blocks]
        figure, axes = _figure(figsize=(1.2 * len(d_ks) + 2.5, 0.5 * len(blocks) + 1.8))
        image = axes.imshow(table, cmap="viridis", aspect="auto")
        axes.set_xticks(range(len(d_ks)), [str(d) for d in d_ks])
        axes.set_yticks(range(len(blocks)), [str(b) for b in blocks])
        axes.set_xlabel("d_k of the student attention")
        axes.set_ylabel("retrained block")
        axes.set_title(f"MLM top-1 with one block retrained ({heads} heads{', ' + variant[1:] if variant else ''})")
        for row, block_values in enumerate(table):
            for column, value in enumerate(block_values):
                axes.text(column, row, f"{value:.1%}", ha="center", va="center", color="w", fontsize=8)
        figure.colorbar(image, ax=axes, label="top-1")
        figure.tight_layout()
        path = output / f"top1_heatmap_heads{heads}{variant}.png"
        figure.savefig(path, dpi=120)
        paths.append(path)
    return paths


def plot_accuracy_vs_parameters(rows, output: Path) -> Path | None:
    points = {}
    for row in rows:  # one point per model name (the last evaluation that has it)
        if "top1" in row and "parameters" in row:
            points[row["model"]] = row
    if not points:
        return None
    figure, axes = _figure(figsize=(7, 4.5))
    for kind in dict.fromkeys(method_of(row) for row in points.values()):
        label, marker = kind
        chosen = [row for row in points.values() if method_of(row) == kind]
        if chosen:
            axes.scatter(
                [r["parameters"] / 1e6 for r in chosen], [r["top1"] for r in chosen], marker=marker, s=70, label=label
            )
            for r in chosen:
                axes.annotate(
                    r["model"],
                    (r["parameters"] / 1e6, r["top1"]),
                    fontsize=7,
                    xytext=(4, 3),
                    textcoords="offset points",
                )
    axes.set_xlabel("parameters (M)")
    axes.set_ylabel("MLM top-1 on masked test sentences")
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = output / "accuracy_vs_parameters.png"
    figure.savefig(path, dpi=120)
    return path


# The one method table: a saved model's meta names its method (recorded with its evaluation, see
# utils.evaluation.describe); the label and marker every table and plot shows come from here.
METHODS = {
    "teacher": ("teacher", "*"),
    "head_pruning": ("head pruning", "v"),
    "neuron_pruning": ("neuron pruning", "<"),
    "head_neuron_pruning": ("head + neuron pruning", ">"),
    "retrained_attention": (STUDENT_INIT.label, "o"),
    "till_end": ("attention trained till the end", "D"),
    "merged_layers": (MERGE_INIT.label, "s"),
    "conditioned_merged_layers": ("conditioned merged layers", "P"),
    "merged_pair": ("merged pair", "s"),
    "layer_drop": (DROP.label, "^"),
    "compound": ("compound", "X"),
}
# evaluations written before models recorded their method: the method of a model by its name's start
BY_NAME = {
    "pruned_ffn": "neuron_pruning",
    "pruned": "head_pruning",
    "retrained": "retrained_attention",
    "merged": "merged_layers",
    "merge_": "merged_pair",
    "layer_drop": "layer_drop",
}
HEALED = "_finetuned"


def method_of(row: dict) -> tuple[str, str]:
    """(label, marker) of an evaluated model (a row of :func:`collect_results`); a layer drop keeps its rule and a
    training-free merge its init in the label."""
    name = row["model"]
    method = row.get("method") or ("teacher" if name == "teacher" else None)
    method = method or next((key for prefix, key in BY_NAME.items() if name.startswith(prefix)), None)
    if method not in METHODS:
        return "other", "x"
    label, marker = METHODS[method]
    if method == "layer_drop":
        stem = name.split("-", 1)[0]  # an older row: the rule from the name, without a variant suffix (-t4)
        rule = row.get("drop_rule") or stem.removeprefix("layer_drop").removesuffix(HEALED).strip("_") or "alternate"
        label = f"{label} ({rule})"
    elif method in ("neuron_pruning", "head_neuron_pruning") and row.get("reconstructed"):
        label = f"{label} + least squares"
    elif row.get("merge_init") == "average":
        label = f"{label} (average)"
    return label, marker


def healed(row: dict) -> bool:
    """Finetuned end to end after the simplification (filled markers) or not (hollow)."""
    return row.get("healing_steps", 0) > 0


def plot_frontier(rows, output: Path) -> Path | None:
    """Top-1 and agreement with the teacher against encoder FLOPs per token: one marker per method, filled
    when healed by finetuning, hollow before healing (training-free, or trained but not healed); error bars
    are the 95% intervals."""
    points = {row["model"]: row for row in rows if "top1" in row and "flops_per_token" in row}
    if len(points) < 2:
        return None
    figure, axes_pair = _figure(1, 2, figsize=(12, 4.8))
    colors = {}
    for axes, metric, title in zip(
        axes_pair, ("top1", "agree_top1"), ("MLM top-1", "same top-1 as the teacher"), strict=True
    ):
        for name, row in sorted(points.items()):
            if metric not in row:
                continue
            label, marker = method_of(row)
            color = colors.setdefault(label, f"C{len(colors)}")
            x, y = row["flops_per_token"] / 1e6, row[metric]
            error = [[y - row.get(f"{metric}_low", y)], [row.get(f"{metric}_high", y) - y]]
            filled = healed(row) or label == "teacher"
            axes.errorbar(
                x,
                y,
                yerr=error,
                fmt=marker,
                color=color,
                markersize=9,
                capsize=3,
                markerfacecolor=color if filled else "white",
                label=label,
            )
            axes.annotate(name, (x, y), fontsize=6, xytext=(4, 3), textcoords="offset points")
        axes.set_xlabel("encoder MFLOPs per token")
        axes.set_ylabel(title)
        axes.yaxis.set_major_formatter(PercentFormatter(1.0))
        axes.grid(alpha=0.3)
    handles, labels = axes_pair[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axes_pair[0].legend(unique.values(), unique.keys(), fontsize=7, title="filled: healed; hollow: before healing")
    figure.tight_layout()
    path = output / "frontier.png"
    figure.savefig(path, dpi=120)
    return path


BUDGETS = (1.0, 0.67, 0.5, 0.33, 0.25)  # shares of the teacher's encoder FLOPs per token the study compares at
BUDGET_SLACK = 0.02  # a model at 51% (an odd last layer kept) still counts at 50%


def budget_of(flop_ratio: float) -> float:
    """The tightest of :data:`BUDGETS` a model with this FLOP ratio fits in (below 25%: 25%)."""
    return min((budget for budget in BUDGETS if flop_ratio <= budget + BUDGET_SLACK), default=BUDGETS[0])


def budget_tables(rows) -> list[str]:
    """Markdown sections, one per compute budget (:data:`BUDGETS`; each model in the tightest it fits), the
    teacher in each, models sorted by top-1."""
    latest = {row["model"]: row for row in rows if "top1" in row and "flop_ratio" in row}
    budgets: dict[float, dict] = {}
    for name, row in latest.items():
        if name != "teacher":
            budgets.setdefault(budget_of(row["flop_ratio"]), {})[name] = row
    sections = []
    for budget, models in sorted(budgets.items(), reverse=True):
        ordered = dict(sorted(models.items(), key=lambda item: -item[1]["top1"]))
        table = markdown_table({"teacher": latest["teacher"], **ordered} if "teacher" in latest else ordered)
        sections.append(f"### Budget: at most {budget:.0%} of the teacher's FLOPs per token\n\n{table}")
    return sections


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = sorted({key for row in rows for key in row}, key=lambda k: (k not in ("evaluation", "model"), k))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def compare_and_save(storage: Storage, first: str, second: str, output: Path) -> dict:
    """:func:`compare_models`, printed (one line per metric: the difference, its interval, whether it
    excludes 0) and saved as ``compare_{first}_vs_{second}.json``."""
    result = compare_models(storage, first, second)
    for key, paired in ((k, result[k]) for k in ("top1", "agree_top1") if k in result):
        verdict = "excludes 0: a real difference" if paired["excludes_zero"] else "includes 0: not distinguishable"
        low, high, count = 100 * paired["low"], 100 * paired["high"], result["sentences"]
        print(
            f"{key}: {first} - {second} = {100 * paired['difference']:+.2f} points, 95% interval "
            f"[{low:+.2f}, {high:+.2f}] over {count} sentences ({verdict})"
        )
    output.mkdir(parents=True, exist_ok=True)
    atomic_write(output / f"compare_{first}_vs_{second}.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2)))
    return result


def write_report(storage: Storage, output: Path, seed_runs: list[str]) -> tuple[list[dict], list[Path]]:
    """``report.md`` / ``report.csv`` (one row per evaluation and model, budget tables first), the plots, and
    with ``seed_runs`` the seeds pooled (``seeds.md`` / ``seeds.csv``). Returns the rows and the plots."""
    rows = collect_results(storage)
    grid = block_grid(storage)
    if not rows and not grid:
        raise UserError(f"--storage_directory {storage.root}: no evaluation results and no block runs to report")
    output.mkdir(parents=True, exist_ok=True)
    write_csv(output / "report.csv", rows)
    sections = []
    for evaluation in dict.fromkeys(row["evaluation"] for row in rows):
        table = markdown_table({row["model"]: row for row in rows if row["evaluation"] == evaluation})
        sections.append(f"### {evaluation}\n\n{table}")
    if seed_runs:
        pooled = pool_seeds([rows] + [collect_results(Storage(folder)) for folder in seed_runs])
        write_csv(output / "seeds.csv", pooled)
        description = "mean ± standard deviation across seeds [min, max]; each seed evaluated on the same masks"
        table = f"## Across seeds\n\n{description}\n\n{seeds_table(pooled)}\n"
        atomic_write(output / "seeds.md", lambda tmp: tmp.write_text(table))
        sections.append(table)
    plots = plot_heatmaps(grid, output)
    plots += [p for p in (plot_accuracy_vs_parameters(rows, output), plot_frontier(rows, output)) if p]
    sections = budget_tables(rows) + sections
    sections += [f"![{path.stem}]({path.name})" for path in plots]
    atomic_write(output / "report.md", lambda tmp: tmp.write_text("# sitra report\n\n" + "\n\n".join(sections) + "\n"))
    return rows, plots
