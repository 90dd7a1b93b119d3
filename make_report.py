"""Collect every evaluation under a storage directory into one table (markdown + CSV) and plots.

- ``report.md`` / ``report.csv``: one row per (evaluation, model) from every ``results/*/metrics.json``;
- ``top1_heatmap_heads{H}.png``: MLM top-1 of the teacher with one block retrained, blocks x d_k, one
  plot per head count (last epoch of every retrain_single_block run);
- ``accuracy_vs_parameters.png``: top-1 against parameters for the teacher, retrained, merged and
  layer-drop models.
Written to ``{storage}/report/``.

python make_report.py --storage_directory storage
"""

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from utils.args import StorageArguments, parse_args  # noqa: E402
from utils.errors import UserError, cli_entry  # noqa: E402
from utils.evaluation import markdown_table  # noqa: E402
from utils.experiment import log, start  # noqa: E402
from utils.files import atomic_write  # noqa: E402
from utils.storage import Storage  # noqa: E402

KINDS = {
    "teacher": "teacher",
    "retrained": "retrained",
    "merge": "merged",
    "merged": "merged",
    "layer_drop": "layer drop",
}


@dataclass
class ReportArguments:
    output_dir: str = field(default="", metadata={"help": "Where to write (default: the storage directory's report)."})


def collect_results(storage: Storage) -> list[dict]:
    rows = []
    for path in storage.all_results:
        report = json.loads(path.read_text())
        for model, values in report.get("models", {}).items():
            rows.append(
                {"evaluation": path.parent.name, "model": model, "sentences": report.get("sentences"), **values}
            )
    return rows


def kind_of(model: str) -> str:
    return next((label for prefix, label in KINDS.items() if model.startswith(prefix)), "other")


def block_grid(storage: Storage) -> dict[int, dict[tuple[int, int], float]]:
    """heads -> {(block, d_k): replaced_top1 of the last epoch}"""
    grid: dict[int, dict[tuple[int, int], float]] = {}
    for run, folder in storage.block_runs("block"):
        metrics = folder / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if not lines:
            continue
        last = json.loads(lines[-1])
        if "replaced_top1" in last:
            grid.setdefault(run.heads, {})[(run.block, run.d_k)] = last["replaced_top1"]
    return grid


def plot_heatmaps(grid, output: Path) -> list[Path]:
    paths = []
    for heads, values in sorted(grid.items()):
        blocks = sorted({block for block, _ in values})
        d_ks = sorted({d_k for _, d_k in values})
        table = [[values.get((block, d_k), float("nan")) for d_k in d_ks] for block in blocks]
        figure, axes = plt.subplots(figsize=(1.2 * len(d_ks) + 2.5, 0.5 * len(blocks) + 1.8))
        image = axes.imshow(table, cmap="viridis", aspect="auto")
        axes.set_xticks(range(len(d_ks)), [str(d) for d in d_ks])
        axes.set_yticks(range(len(blocks)), [str(b) for b in blocks])
        axes.set_xlabel("d_k of the student attention")
        axes.set_ylabel("retrained block")
        axes.set_title(f"MLM top-1 with one block retrained ({heads} heads)")
        for row, block_values in enumerate(table):
            for column, value in enumerate(block_values):
                axes.text(column, row, f"{value:.1%}", ha="center", va="center", color="w", fontsize=8)
        figure.colorbar(image, ax=axes, label="top-1")
        figure.tight_layout()
        path = output / f"top1_heatmap_heads{heads}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        paths.append(path)
    return paths


def plot_accuracy_vs_parameters(rows, output: Path) -> Path | None:
    points = {}
    for row in rows:  # one point per model name (the last evaluation that has it)
        if "top1" in row and "parameters" in row:
            points[row["model"]] = row
    if not points:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for kind, marker in (("teacher", "*"), ("retrained", "o"), ("merged", "s"), ("layer drop", "^"), ("other", "x")):
        chosen = [row for name, row in points.items() if kind_of(name) == kind]
        if chosen:
            axes.scatter(
                [r["parameters"] / 1e6 for r in chosen], [r["top1"] for r in chosen], marker=marker, s=70, label=kind
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
    axes.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = output / "accuracy_vs_parameters.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


@cli_entry
def main(argv=None) -> dict:
    flags = parse_args([StorageArguments, ReportArguments], __doc__, argv)
    start(flags)
    storage = Storage(flags.storage.storage_directory)
    rows = collect_results(storage)
    grid = block_grid(storage)
    if not rows and not grid:
        raise UserError(f"--storage_directory {storage.root}: no evaluation results and no block runs to report")
    output = Path(flags.report.output_dir or storage.report)
    output.mkdir(parents=True, exist_ok=True)
    columns = sorted({key for row in rows for key in row}, key=lambda k: (k not in ("evaluation", "model"), k))
    with open(output / "report.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    sections = []
    for evaluation in dict.fromkeys(row["evaluation"] for row in rows):
        table = markdown_table({row["model"]: row for row in rows if row["evaluation"] == evaluation})
        sections.append(f"### {evaluation}\n\n{table}")
    plots = plot_heatmaps(grid, output) + [p for p in [plot_accuracy_vs_parameters(rows, output)] if p]
    sections += [f"![{path.stem}]({path.name})" for path in plots]
    atomic_write(output / "report.md", lambda tmp: tmp.write_text("# sitra report\n\n" + "\n\n".join(sections) + "\n"))
    log.info("report written to %s (%d rows, %d plots)", output, len(rows), len(plots))
    return {"rows": len(rows), "plots": [str(p) for p in plots], "output": str(output)}


if __name__ == "__main__":
    main()
