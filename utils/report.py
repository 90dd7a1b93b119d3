"""The report of a storage directory: every evaluation collected into rows, paired comparisons on the same masks,
seeds pooled, budget tables and plots (matplotlib's object API: no pyplot, no display needed).
make_report.py parses the flags and calls :func:`write_report` or :func:`compare_and_save`."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from models import DROP, MERGE_INIT, STUDENT_INIT
from utils.checkpoint import RunDirectory, kept_epoch
from utils.compound import recipe_variant
from utils.errors import NotCompared, UserError
from utils.evaluation import MASKS_KEY, PER_SENTENCE, evaluation_precision, markdown_table
from utils.files import atomic_write
from utils.statistics import CONFIDENCE, paired_difference, seed_and_sentence_difference
from utils.storage import Storage


def _figure(rows: int = 1, columns: int = 1, figsize=(7, 4.5)):
    """A figure and its axes, as pyplot.subplots gives them."""
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, columns)


def per_sentence_values(
    storage: Storage, model: str, evaluation: str | None = None
) -> dict[str, tuple[str, dict[str, np.ndarray], str]]:
    """masks fingerprint -> (evaluation, metric -> per-sentence values, the evaluation's precision) of every
    evaluation of ``model`` (only the one named ``evaluation``, when given)."""
    found = {}
    for metrics_file in storage.all_results:
        arrays_file = metrics_file.parent / PER_SENTENCE
        if not arrays_file.exists() or evaluation not in (None, metrics_file.parent.name):
            continue
        with np.load(arrays_file) as arrays:
            values = {key.split("/", 1)[1]: arrays[key] for key in arrays.files if key.split("/", 1)[0] == model}
            saved_masks = str(arrays[MASKS_KEY]) if MASKS_KEY in arrays.files else None  # (absent before 2026-12-05)
        if values:
            metrics = json.loads(metrics_file.read_text())
            masks, sentences = metrics.get("masks"), metrics.get("sentences")
            if masks is None or saved_masks not in (None, masks) or any(len(v) != sentences for v in values.values()):
                raise UserError(f"{arrays_file}: not the per-sentence values of {metrics_file} (their masks or "
                                "sentence counts differ, or it names no masks): evaluate again")  # fmt: skip
            found.setdefault(masks, (metrics_file.parent.name, values, evaluation_precision(metrics)))
    return found


def compare_models(
    storage: Storage,
    first: str,
    second: str,
    seed_storages: Sequence[Storage] = (),
    evaluation: str | None = None,
    confidence: float = CONFIDENCE,
    against: Sequence[Storage] | None = None,
) -> dict:
    """Paired differences ``first - second`` on the masks both were evaluated on (in the results folder
    ``evaluation`` only, when given), with ``confidence`` intervals. With ``seed_storages`` (the same experiments
    under other seeds, evaluated on the same masks) the difference is over seeds and sentences, its interval from
    resampling both (:func:`utils.statistics.seed_and_sentence_difference`); both must be evaluated in every
    one. ``against``: where ``second`` is, seed by seed (another study's storages: the same seeds and data give
    the same masks); by default where ``first`` is."""
    storages = [storage, *seed_storages]
    # per model: one {masks: (evaluation, metric -> [N])} per seed
    found = [[per_sentence_values(s, model, evaluation) for s in where]
             for model, where in ((first, storages), (second, against or storages))]  # fmt: skip
    shared = [masks for masks in found[0][0] if all(masks in per_seed for seeds in found for per_seed in seeds)]
    if not shared:
        missing = [model for model, seeds in zip((first, second), found, strict=True) if not all(seeds)]
        where = f" under every one of {len(storages)} seeds" if seed_storages else ""
        why = (
            f"no evaluation of {', '.join(missing)}{where}"
            if missing
            else "they were never evaluated on the same masks"
        )
        raise NotCompared(
            f"--compare {first} {second}: {why} (run both through an evaluation with the same data flags)"
        )
    # of several evaluations both models are in, the one with the most sentences (e.g. the whole test split)
    masks = max(shared, key=lambda fingerprint: len(found[0][0][fingerprint][1]["top1"]))
    places = (storages, against or storages)  # evaluation (by its storage and name) -> its precision
    require_same_precision(
        {f"{at.root}/{per_seed[masks][0]}": per_seed[masks][2]
         for seeds, roots in zip(found, places, strict=True) for per_seed, at in zip(seeds, roots, strict=True)},
        f"--compare {first} {second}",
    )  # fmt: skip
    values = [[per_seed[masks][1] for per_seed in seeds] for seeds in found]  # model -> seed -> metric -> [N]
    result = {
        "first": first,
        "second": second,
        "evaluations": [seeds[0][masks][0] for seeds in found],
        "sentences": len(values[0][0]["top1"]),
        "seeds": len(storages),
    }
    for key in ("top1", "agree_top1"):
        if all(key in per_seed for seeds in values for per_seed in seeds):
            stacked = [np.stack([per_seed[key] for per_seed in seeds]) for seeds in values]  # model -> [S, N]
            if len(storages) > 1:
                result[key] = seed_and_sentence_difference(*stacked, confidence=confidence)
            else:
                result[key] = paired_difference(stacked[0][0], stacked[1][0], confidence=confidence)
            result[key] |= {"first_mean": float(stacked[0].mean()), "second_mean": float(stacked[1].mean())}
    return result


def require_same_precision(precisions: dict[str, str], what: str) -> None:
    """One error naming them when the evaluations (name -> precision) did not all run in the same precision: their
    figures and paired differences would mix the models with the arithmetic."""
    if len(set(precisions.values())) > 1:
        named = ", ".join(f"{name}: {precision}" for name, precision in precisions.items())
        raise UserError(f"{what}: evaluations of different precisions ({named}); evaluate them all in one precision")


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
                    "precision": evaluation_precision(report),
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
    """(heads, variant) -> {(block, d_k): replaced_top1 of the epoch the run keeps (:func:`kept_epoch`, the one
    its models are built from)}: variants are never mixed in one grid"""
    grid: dict[tuple[int, str], dict[tuple[int, int], float]] = {}
    for run, folder in storage.block_runs("block"):
        kept = kept_epoch(folder)
        records = RunDirectory(folder, {}, 1).read_metrics()
        record = next((r for r in records if r.get("epoch") == kept and "batches_done" not in r), {})
        if "replaced_top1" in record:
            grid.setdefault((run.heads, run.variant), {})[(run.block, run.d_k)] = record["replaced_top1"]
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


def criteria_grid(rows) -> tuple[dict[tuple[str, str], dict], list[str]]:
    """(block, criterion) -> evaluation row of the teacher with that one block replaced by the student of that
    criterion (a single-layer ``attention`` compound), plus (``"all"``, criterion): the unhealed model assembled
    from all of that criterion's blocks; and the criteria in their first-seen order. A criterion is named by
    its runs' variant (``l1``, ``ce_logits``; ``mse`` for the default)."""
    grid, shapes = {}, set()
    for row in rows:
        recipe = row.get("recipe") or {}
        if (
            row.get("method") == "compound"
            and set(recipe) == {"attention"}
            and len(recipe["attention"].get("layers", [])) == 1
        ):
            attention = recipe["attention"]
            variant = recipe_variant(attention, attention.get("source", "block"))
            grid[(str(attention["layers"][0]), variant[1:] or "mse")] = row
            shapes.add((attention["heads"], attention["d_k"], variant))
    for row in rows:
        for heads, d_k, variant in shapes:
            if row["model"] == f"retrained_{d_k}_{heads}{variant}" and not healed(row):
                grid[("all", variant[1:] or "mse")] = row
    return grid, list(dict.fromkeys(criterion for _, criterion in grid))


PALE = 0.3  # how much of its colour a cell keeps when its interval does not exclude the reference


def interval_colours(values: np.ndarray, significant: np.ndarray, cmap, norm) -> np.ndarray:
    """RGBA [rows, columns, 4] of a heatmap: each value's colour on the numeric scale ``norm``, blended toward
    white where ``significant`` is False (its interval contains the reference); NaN cells white."""
    colours = cmap(norm(np.nan_to_num(values)))
    pale = ~significant[..., None]
    colours[..., :3] = np.where(pale, 1 - PALE * (1 - colours[..., :3]), colours[..., :3])
    colours[~np.isfinite(values)] = (1.0, 1.0, 1.0, 1.0)
    return colours


def plot_criteria(rows, output: Path) -> Path | None:
    """Heatmaps, blocks x criteria: top-1 minus the teacher's (points) and agreement with the teacher (%), with
    one block replaced, and in the last row all blocks replaced (assembled). Numeric colour scales; a difference
    whose 95% paired interval contains 0 (indistinguishable from the teacher) is pale."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    grid, criteria = criteria_grid(rows)
    if not grid:
        return None
    blocks = sorted({block for block, _ in grid if block != "all"}, key=int) + (
        ["all"] if any(b == "all" for b, _ in grid) else []
    )

    def table(key: str) -> np.ndarray:
        return np.array(
            [[100 * grid[(b, c)].get(key, np.nan) if (b, c) in grid else np.nan for c in criteria] for b in blocks]
        )

    difference, low, high = table("top1_vs_teacher"), table("top1_vs_teacher_low"), table("top1_vs_teacher_high")
    agreement = table("agree_top1")
    limit = max(float(np.nanmax(np.abs(difference))) if np.isfinite(difference).any() else 1.0, 0.1)
    panels = (  # values, significant cells, colour map, scale, title, label format
        (difference, (low > 0) | (high < 0), "RdBu", Normalize(-limit, limit),
         "top-1 − teacher (points); pale: interval contains 0", "{:+.2f}"),
        (agreement, np.ones_like(agreement, dtype=bool), "viridis",
         Normalize(np.nanmin(agreement), np.nanmax(agreement)), "same top-1 as the teacher (%)", "{:.1f}"),
    )  # fmt: skip
    figure, axes_pair = _figure(1, 2, figsize=(5.5 + 2.4 * len(criteria), 0.45 * len(blocks) + 2.4))
    figure.subplots_adjust(wspace=0.6)
    for axes, (values, significant, name, norm, title, fmt) in zip(axes_pair, panels, strict=True):
        cmap = colormaps[name]
        colours = interval_colours(values, significant, cmap, norm)
        axes.imshow(colours, aspect="auto")
        axes.set_xticks(range(len(criteria)), criteria)
        axes.set_yticks(range(len(blocks)), [f"block {b}" if b != "all" else "all (assembled)" for b in blocks])
        axes.set_title(title, fontsize=9)
        for (row, column), value in np.ndenumerate(values):
            if np.isfinite(value):
                dark = colours[row, column, :3] @ np.array([0.299, 0.587, 0.114]) < 0.5  # luminance
                axes.text(column, row, fmt.format(value), ha="center", va="center", fontsize=8,
                          color="white" if dark else "black")  # fmt: skip
        figure.colorbar(ScalarMappable(norm, cmap), ax=axes, fraction=0.05)
    figure.suptitle("distillation criterion of the student attention, per replaced block", fontsize=10)
    path = output / "criteria_heatmap.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_teacher_curve(storage: Storage, output: Path) -> Path | None:
    """Validation top-1 of the teacher's MLM training against its steps (train_teacher.py's checks)."""
    records = [r for r in RunDirectory(storage.run("teacher"), {}, 1).read_metrics() if "top1" in r]
    if len(records) < 2:
        return None
    figure, axes = _figure(figsize=(6, 3.6))
    steps, top1 = [r["step"] for r in records], [r["top1"] for r in records]
    axes.plot(steps, top1, marker="o")
    for step, value in zip(steps[1:], top1[1:], strict=True):
        axes.annotate(
            f"{value:.1%}", (step, value), fontsize=7, xytext=(0, -12), textcoords="offset points", ha="center"
        )
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("validation MLM top-1")
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_ylim(bottom=min(top1[1:]) - 0.02)  # step 0 (an untrained head, ~0%) would flatten the curve
    axes.set_title("teacher training", fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path = output / "teacher_curve.png"
    figure.savefig(path, dpi=120)
    return path


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
HEALED = "_finetuned"


def method_of(row: dict) -> tuple[str, str]:
    """(label, marker) of an evaluated model (a row of :func:`collect_results`); a layer drop keeps its rule and a
    training-free merge its init in the label."""
    name = row["model"]
    method = row.get("method") or ("teacher" if name == "teacher" else None)
    if method not in METHODS:
        return "other", "x"
    label, marker = METHODS[method]
    if method == "compound" and row.get("recipe"):
        return compound_label(row["recipe"]), marker
    if method == "layer_drop":
        label = f"{label} ({row['drop_rule']})"
    elif method in ("neuron_pruning", "head_neuron_pruning") and row.get("reconstructed"):
        label = label + reconstruction_label(row["reconstructed"])
    elif row.get("merge_init") == "average":
        label = f"{label} (average)"
    return label, marker


COMPOUND_PARTS = {  # a compound recipe's parts as a family label names them (utils/compound.py)
    "attention": "retrained attention",
    "feed_forward": "retrained feed-forward",
    "merge": "merged pairs",
    "prune_heads": "head pruning",
    "prune_neurons": "neuron pruning",
    "drop": "layer drop",
}


def compound_label(recipe: dict) -> str:
    """The family of a compound model from its recipe: its parts, and least squares (and which) when a pruned
    feed-forward was reconstructed (``retrained attention + retrained feed-forward``; ``layer drop (top)`` alone)."""
    if set(recipe) == {"drop"}:
        return f"{DROP.label} ({recipe['drop']['rule']})"
    label = " + ".join(COMPOUND_PARTS[part] for part in COMPOUND_PARTS if part in recipe)
    return label + reconstruction_label(recipe.get("prune_neurons", {}).get("reconstruct"))


def reconstruction_label(reconstruct) -> str:
    """What a label adds for a pruned feed-forward's reconstruction (``reconstruct``: a recipe's or saved meta's
    value; true and ``least_squares`` are Kwon et al.'s)."""
    if not reconstruct:
        return ""
    return " + least squares" if reconstruct in (True, "least_squares") else f" + least squares ({reconstruct})"


def healed(row: dict) -> bool:
    """Finetuned end to end after the simplification (filled markers) or not (hollow)."""
    return row.get("healing_steps", 0) > 0


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats at the same or lower cost: (cost, value) sorted by cost."""
    front, best = [], float("-inf")
    for cost, value in sorted(points, key=lambda point: (point[0], -point[1])):
        if value > best:
            front.append((cost, value))
            best = value
    return front


def _best_of_each_budget(points: dict[str, dict]) -> dict[float, dict]:
    """Compression budget -> the model with the highest top-1 in it. The teacher's 100% is not named: milder cuts
    there, e.g. half attention at 83%, would crowd the 67% label."""
    best = {}
    for name, row in points.items():
        budget = budget_of(row["flop_ratio"])
        if budget < 1 and name != "teacher" and (budget not in best or row["top1"] > best[budget]["top1"]):
            best[budget] = row
    return best


def _draw_budget_guides(axes) -> None:
    """Every compression budget as a dotted vertical line, its share written at the top."""
    for budget in BUDGETS:
        axes.axvline(budget, color="0.6", linestyle=":", linewidth=1, zorder=0)
        axes.annotate(
            f"{budget:.0%}",
            (budget, 1),
            xycoords=("data", "axes fraction"),
            xytext=(2, -10),
            textcoords="offset points",
            fontsize=7,
            color="0.4",
        )


def _draw_family(axes, metric: str, label: str, marker: str, color: str, members: list[dict]) -> None:
    """One method family's models at (FLOP ratio, ``metric``) with their 95% intervals, filled when healed, and
    the family's Pareto line; a model without the metric is left out."""
    values = [(row["flop_ratio"], _value(row, metric)) for row in members]
    front = pareto([value for value in values if value[1] is not None])
    if len(front) > 1:
        axes.plot(*zip(*front, strict=True), color=color, linewidth=1, alpha=0.7)
    for row, (x, y) in zip(members, values, strict=True):
        if y is None:
            continue
        error = [[y - row.get(f"{metric}_low", y)], [row.get(f"{metric}_high", y) - y]]
        filled = healed(row) or label == "teacher"
        axes.errorbar(
            x,
            y,
            yerr=error,
            fmt=marker,
            color=color,
            markersize=8,
            capsize=2,
            markerfacecolor=color if filled else "white",
            label=label,
        )


def _name_best(axes, metric: str, best: dict[float, dict]) -> None:
    """The name of each budget's best model above its point."""
    for order, (_, row) in enumerate(sorted(best.items())):  # alternate heights: neighbouring budgets
        if _value(row, metric) is None:  # e.g. evaluated without the teacher's predictions: no agreement
            continue
        axes.annotate(
            row["model"].replace(HEALED, " +heal").replace("+heal-", "+heal "),
            (row["flop_ratio"], _value(row, metric)),
            fontsize=7,
            xytext=(0, 12 + 12 * (order % 2)),
            textcoords="offset points",
            ha="center",
            arrowprops={"arrowstyle": "-", "color": "0.5"},
        )


def plot_frontier(rows, output: Path) -> Path | None:
    """Top-1 and agreement with the teacher against the share of the teacher's encoder FLOPs per token. One
    color and marker per method family with its Pareto line; filled when healed by finetuning, hollow before
    healing; error bars are the 95% intervals; the budgets as vertical guides; only the best model of each
    compression budget below 100% is named (the tables give every model), so no labels overlap."""
    points = {row["model"]: row for row in rows if "top1" in row and "flop_ratio" in row}
    if len(points) < 2:
        return None
    figure, axes_pair = _figure(1, 2, figsize=(13, 5.2))
    families = {}
    for _, row in sorted(points.items()):
        families.setdefault(method_of(row), []).append(row)
    # the teacher in black, so the ten colours of the cycle go to ten method families before one repeats
    others = [family for family in families if family[0] != "teacher"]
    colors = {family: "black" if family[0] == "teacher" else f"C{others.index(family) % 10}" for family in families}
    best = _best_of_each_budget(points)
    for axes, metric, title in zip(
        axes_pair, ("top1", "agree_top1"), ("MLM top-1", "same top-1 as the teacher"), strict=True
    ):
        _draw_budget_guides(axes)
        for (label, marker), members in families.items():
            _draw_family(axes, metric, label, marker, colors[label, marker], members)
        _name_best(axes, metric, best)
        axes.set_xlabel("share of the teacher's encoder FLOPs per token")
        axes.set_ylabel(title)
        axes.xaxis.set_major_formatter(PercentFormatter(1.0))
        axes.yaxis.set_major_formatter(PercentFormatter(1.0))
        axes.invert_xaxis()  # from the teacher to the smallest model
        axes.grid(alpha=0.3)
    handles, labels = axes_pair[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    figure.legend(
        unique.values(),
        unique.keys(),
        fontsize=8,
        loc="lower center",
        ncol=3,
        frameon=False,
        title="filled: healed; hollow: before healing; lines: each family's Pareto front; named: the "
        "best of each budget",
    )
    figure.tight_layout(rect=(0, 0.02 + 0.045 * ((len(unique) + 2) // 3), 1, 1))
    path = output / "frontier.png"
    figure.savefig(path, dpi=120)
    return path


def _value(row: dict, metric: str) -> float | None:
    """The teacher agrees with itself: 100% on the agreement panel."""
    return 1.0 if metric == "agree_top1" and row["model"] == "teacher" else row.get(metric)


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


SITRA_METHODS = ("retrained_attention", "till_end", "merged_layers", "conditioned_merged_layers", "merged_pair")
STUDENT_PARTS = ("attention", "feed_forward", "merge")  # compound parts made of sitra's trained students


def side_of(row: dict) -> str:
    """``sitra`` for a model made (at least in part) of sitra's distilled students, ``field`` for the field's
    methods (pruning, layer drop, averaged merges), ``teacher``."""
    if row["model"] == "teacher":
        return "teacher"
    if row.get("method") == "compound":
        return "sitra" if any(part in (row.get("recipe") or {}) for part in STUDENT_PARTS) else "field"
    return "sitra" if row.get("method") in SITRA_METHODS else "field"


def best_against_field(
    storage: Storage, rows, seed_storages: Sequence[Storage] = (), select_on: str | None = None
) -> list[dict]:
    """Per budget (:data:`BUDGETS`): sitra's best model and the field's best by top-1, and their paired
    difference. With ``select_on`` (an evaluation of other sentences, e.g. validation ones) each side's best is
    the best there, and the difference is measured on the largest other evaluation of ``rows`` both are in: chosen
    on one set of sentences, reported on another. Without it both happen on the same ``rows`` (optimistic: a
    best chosen on the sentences it is reported on). With ``seed_storages``: only the models evaluated under every
    seed, ranked by their top-1 averaged over the seeds, compared over seeds and sentences (:func:`compare_models`)."""
    ranked = [row for row in rows if row["evaluation"] == select_on] if select_on else rows
    if seed_storages:
        runs = [ranked] + [collect_results(s) for s in seed_storages]
        means = {
            (row["model"], row["masks"]): row["top1_mean"]
            for row in pool_seeds(runs)
            if row["seeds"] == len(runs) and "top1_mean" in row
        }
        ranked = [
            row | {"top1": means[row["model"], row.get("masks")]}
            for row in ranked
            if (row["model"], row.get("masks")) in means
        ]
    best: dict[tuple[float, str], dict] = {}
    for row in ranked:
        if "top1" in row and "flop_ratio" in row and side_of(row) != "teacher":
            key = (budget_of(row["flop_ratio"]), side_of(row))
            if key not in best or row["top1"] > best[key]["top1"]:
                best[key] = row
    results = []
    for budget in BUDGETS:
        if (budget, "sitra") in best and (budget, "field") in best:
            first, second = best[(budget, "sitra")]["model"], best[(budget, "field")]["model"]
            entry = {"budget": budget, "first": first, "second": second, "selected_on": select_on}
            reported_on = _reported_on(rows, first, second, select_on) if select_on else None
            if select_on and reported_on is None:
                results.append(entry)  # no evaluation of other sentences holds both: nothing to report
                continue
            try:
                results.append(entry | compare_models(storage, first, second, seed_storages, reported_on))
            except NotCompared:  # never evaluated on the same masks: no paired difference to give
                results.append(entry)
    return results


def _reported_on(rows, first: str, second: str, select_on: str) -> str | None:
    """The evaluation other than ``select_on`` with the most sentences that holds both models, or None."""
    held = [
        {row["evaluation"]: row.get("sentences") or 0 for row in rows if row["model"] == model}
        for model in (first, second)
    ]
    shared = [name for name in held[0] if name in held[1] and name != select_on]
    return max(shared, key=lambda name: held[0][name]) if shared else None


def best_against_field_table(comparisons: list[dict]) -> str:
    """A markdown section: one row per budget of :func:`best_against_field`."""
    seeds = max(result.get("seeds", 1) for result in comparisons)
    pooled = f", over {seeds} seeds: the intervals resample seeds and sentences" if seeds > 1 else ""
    selected_on = comparisons[0].get("selected_on")
    chosen = (
        f"Each side's best chosen by top-1 on `{selected_on}`, the difference measured on the largest other evaluation "
        "both are in."
        if selected_on
        else "Each side's best chosen on the same sentences the difference is measured on: optimistic for both "
        "sides (choose on validation sentences with --select_on)."
    )
    lines = [
        f"## sitra's best against the field's best, per budget (paired, same masks{pooled})",
        "",
        chosen,
        "",
        "| budget | sitra's best | the field's best | top-1 difference (points, 95% interval) "
        "| = teacher top-1 difference |",
        "|---|---|---|---|---|",
    ]
    for result in comparisons:
        cells = []
        for key in ("top1", "agree_top1"):
            paired = result.get(key)
            cells.append(
                f"{100 * paired['difference']:+.2f} [{100 * paired['low']:+.2f}, {100 * paired['high']:+.2f}]"
                if paired
                else ""
            )
        lines.append(
            f"| {result['budget']:.0%} | `{result['first']}` | `{result['second']}` | {cells[0]} | {cells[1]} |"
        )
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = sorted({key for row in rows for key in row}, key=lambda k: (k not in ("evaluation", "model"), k))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def compare_and_save(
    storage: Storage, first: str, second: str, output: Path, seed_storages: Sequence[Storage] = ()
) -> dict:
    """:func:`compare_models`, printed (one line per metric: the difference, its interval, whether it
    excludes 0) and saved as ``compare_{first}_vs_{second}.json`` (``..._seeds{N}.json`` pooled over N seeds)."""
    result = compare_models(storage, first, second, seed_storages)
    for key, paired in ((k, result[k]) for k in ("top1", "agree_top1") if k in result):
        verdict = "excludes 0: a real difference" if paired["excludes_zero"] else "includes 0: not distinguishable"
        low, high, count = 100 * paired["low"], 100 * paired["high"], result["sentences"]
        pooled = f", averaged over {result['seeds']} seeds" if seed_storages else ""
        print(
            f"{key}: {first} - {second} = {100 * paired['difference']:+.2f} points, 95% interval "
            f"[{low:+.2f}, {high:+.2f}] over {count} sentences{pooled} ({verdict})"
        )
    output.mkdir(parents=True, exist_ok=True)
    name = f"compare_{first}_vs_{second}" + (f"_seeds{result['seeds']}" if seed_storages else "")
    atomic_write(output / f"{name}.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2)))
    return result


def compare_pairs(storage: Storage, names: list[str], output: Path, seed_storages: Sequence[Storage] = ()) -> dict:
    """Every pair of ``names`` compared in this one process (a process per pair spends most of its time
    importing torch). One pair: its result. Several: ``{"comparisons": [...]}``, after every pair that can be
    compared; those that cannot are printed as error lines and the run then fails."""
    pairs = list(zip(names[::2], names[1::2], strict=True))
    if len(pairs) == 1:
        return compare_and_save(storage, *pairs[0], output, seed_storages)
    results = []
    for first, second in pairs:
        try:
            results.append(compare_and_save(storage, first, second, output, seed_storages))
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
    if len(results) < len(pairs):
        failed = len(pairs) - len(results)
        raise UserError(f"--compare: {failed} of {len(pairs)} pairs could not be compared (each named above)")
    return {"comparisons": results}


def write_report(
    storage: Storage,
    output: Path,
    seed_runs: list[str],
    frontier_evaluations: list[str] | None = None,
    select_on: str | None = None,
) -> tuple[list[dict], list[Path]]:
    """``report.md`` / ``report.csv`` (one row per evaluation and model, budget tables first), the plots, and
    with ``seed_runs`` the seeds pooled (``seeds.md`` / ``seeds.csv``). The budget tables, frontier and
    parameter plot show the ``frontier_evaluations`` (default: all); each side's best is chosen on ``select_on``
    (:func:`best_against_field`). Returns the rows and the plots."""
    rows = collect_results(storage)
    seed_rows = [collect_results(Storage(folder)) for folder in seed_runs]
    every = [(storage.root, rows), *zip(map(Path, seed_runs), seed_rows, strict=True)]
    precisions = {f"{root}/{row['evaluation']}": row["precision"] for root, found in every for row in found}
    require_same_precision(precisions, f"--storage_directory {storage.root}")  # the tables compare them all
    grid = block_grid(storage)
    if not rows and not grid:
        raise UserError(f"--storage_directory {storage.root}: no evaluation results and no block runs to report")
    evaluations = sorted({row["evaluation"] for row in rows})
    if select_on is not None and select_on not in evaluations:
        raise UserError(f"--select_on {select_on}: no such evaluation under {storage.root} ({', '.join(evaluations)})")
    output.mkdir(parents=True, exist_ok=True)
    write_csv(output / "report.csv", rows)
    sections = []
    for evaluation in dict.fromkeys(row["evaluation"] for row in rows):
        table = markdown_table({row["model"]: row for row in rows if row["evaluation"] == evaluation})
        sections.append(f"### {evaluation}\n\n{table}")
    if seed_runs:
        pooled = pool_seeds([rows] + seed_rows)
        write_csv(output / "seeds.csv", pooled)
        description = "mean ± standard deviation across seeds [min, max]; each seed evaluated on the same masks"
        table = f"## Across seeds\n\n{description}\n\n{seeds_table(pooled)}\n"
        atomic_write(output / "seeds.md", lambda tmp: tmp.write_text(table))
        sections.append(table)
    shown = [row for row in rows if not frontier_evaluations or row["evaluation"] in frontier_evaluations]
    plots = plot_heatmaps(grid, output)
    more = (
        plot_accuracy_vs_parameters(shown, output),
        plot_frontier(shown, output),
        plot_criteria(rows, output),
        plot_teacher_curve(storage, output),
    )
    plots += [p for p in more if p]
    sections = budget_tables(shown) + sections
    best_sections = []
    # the shown evaluations, and the selection's rows whatever the tables show
    candidates = shown + [row for row in rows if select_on and row["evaluation"] == select_on and row not in shown]
    comparisons = best_against_field(storage, candidates, select_on=select_on)
    if comparisons:
        atomic_write(output / "best_against_field.json", lambda tmp: tmp.write_text(json.dumps(comparisons, indent=2)))
        best_sections.append(best_against_field_table(comparisons))
    if seed_runs:  # the same over every seed: the intervals resample seeds as well as sentences
        seeds = [Storage(folder) for folder in seed_runs]
        pooled_comparisons = best_against_field(storage, candidates, seeds, select_on)
        if pooled_comparisons:
            text = json.dumps(pooled_comparisons, indent=2)
            atomic_write(output / "best_against_field_seeds.json", lambda tmp: tmp.write_text(text))
            best_sections.append(best_against_field_table(pooled_comparisons))
    sections = best_sections + sections
    sections += [f"![{path.stem}]({path.name})" for path in plots]
    atomic_write(output / "report.md", lambda tmp: tmp.write_text("# sitra report\n\n" + "\n\n".join(sections) + "\n"))
    return rows, plots
