"""Collect every evaluation under a storage directory into one table (markdown + CSV) and plots.

- ``report.md`` / ``report.csv``: one row per (evaluation, model) from every ``results/*/metrics.json``;
- ``top1_heatmap_heads{H}{variant}.png``: MLM top-1 of the teacher with one block retrained, blocks x d_k,
  one plot per head count and run variant (``-ce_logits``, ``-init_svd``, ...), last epoch of every
  retrain_single_block run;
- ``accuracy_vs_parameters.png``: top-1 against parameters for the teacher, retrained, merged and
  layer-drop models;
- ``frontier.png`` and one table per compute budget (``--frontier_evaluations``: of those evaluations only);
- ``criteria_heatmap.png``: blocks x distillation criteria, each block alone replaced and all assembled;
- ``teacher_curve.png``: the teacher's validation top-1 over its training steps;
- ``best_against_field.json``: per budget, sitra's best against the field's best, paired on the same masks (chosen
  on ``--select_on``'s sentences, compared on others);
- with ``--study FILE``: the storage directory is that study's root (its workflow's storage), and its results are
  written as data, ``data/models.csv`` and ``data/comparisons.csv`` (utils/study_report.py), with
  ``report/study.md``, their tables; ``--tables DIR`` prints the tables of such a data folder (e.g. one committed
  under docs/data/) as markdown;
- with ``--seed_runs``: ``seeds.md`` / ``seeds.csv``, every model trained under several seeds as mean ± spread,
  and ``best_against_field_seeds.json``, the same comparison over the seeds (intervals resampling seeds too).
Written to ``{storage}/report/``.

python make_report.py --storage_directory storage
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from utils.args import StorageArguments, flag, parse_args, require
from utils.docs_tables import regenerate_documents
from utils.experiment import cli_entry, log, start
from utils.report import compare_pairs, write_report
from utils.storage import Storage
from utils.study import Plan, Study
from utils.study_report import study_markdown, write_study_data


@dataclass
class ReportArguments:
    attribute = "report"

    output_dir: str = flag("", "Where to write (default: the storage directory's report).")
    compare: Optional[list[str]] = flag(
        None,
        "Pairs of model names (A B [C D ...]): print each pair's paired top-1 (and agreement) difference on the same "
        "masks with its 95% paired t-test interval, and whether it excludes 0 (writes compare_A_vs_B.json). A pair "
        "that cannot be compared is named in an error line, the others still run, and the exit code is non-zero.",
    )
    seed_runs: Optional[list[str]] = flag(
        None,
        "Storage directories of the same experiments run with another --seed: every model evaluated under this "
        "storage directory and one of them, on the same test masks, is pooled into mean ± spread across seeds "
        "(seeds.md, seeds.csv), and sitra's best against the field's best is compared over seeds and sentences, "
        "the interval resampling both (best_against_field_seeds.json); with --compare, the two models are "
        "compared so.",
    )
    frontier_evaluations: Optional[list[str]] = flag(
        None,
        "Evaluations (results folder names) the budget tables, frontier and parameter plot show (default: all; e.g. "
        "leave out the per-block models of a criteria evaluation).",
    )
    select_on: Optional[str] = flag(
        None,
        "An evaluation (results folder name) of other sentences than the reported ones, e.g. validation sentences: "
        "each side's best is chosen by its top-1 there and compared on the largest other evaluation (default: chosen "
        "and compared on the same sentences, which the table then says).",
    )
    study: Optional[str] = flag(
        None,
        "A study file (studies/*.yaml) whose root is --storage_directory: write its results as tidy tables "
        "(data/models.csv, data/comparisons.csv) and report/study.md.",
    )
    tables: Optional[str] = flag(None, "A study's data folder (models.csv, comparisons.csv): print its tables.")
    docs: bool = flag(
        False,
        "Rewrite the generated tables of README.md, docs/RESULTS.md and docs/round3_models.md (<!-- generated: ... --> "
        "sections) from the data committed under docs/data/.",
    )

    def __post_init__(self):
        require(self.study is None or Path(self.study).is_file(), f"--study {self.study}: no such study file")
        require(self.tables is None or Path(self.tables).is_dir(), f"--tables {self.tables}: not a directory")
        require(
            self.compare is None or (self.compare and len(self.compare) % 2 == 0),
            f"--compare takes pairs of model names (an even count), got {len(self.compare or [])}",
        )
        for folder in self.seed_runs or []:
            require(Path(folder).is_dir(), f"--seed_runs {folder}: not a directory")


REPOSITORY = Path(__file__).resolve().parent


GROUPS = [StorageArguments, ReportArguments]


@cli_entry
def main(argv=None) -> dict:
    flags = parse_args(GROUPS, __doc__, argv)
    start(flags)
    storage, options = Storage(flags.storage.storage_directory), flags.report
    if options.docs:
        changed = regenerate_documents(REPOSITORY)
        log.info("generated tables: %s", ", ".join(map(str, changed)) or "already up to date")
        return {"changed": [str(path) for path in changed]}
    if options.tables:
        print(study_markdown(Path(options.tables)))
        return {"tables": options.tables}
    if options.study:
        plan = Plan(Study.load(options.study), storage.root, python="")
        files = write_study_data(plan)
        log.info("study %s: %s", plan.study.name, ", ".join(str(path) for path in files.values()))
        return {name: str(path) for name, path in files.items()}
    output = Path(options.output_dir or storage.report)
    if options.compare:
        return compare_pairs(storage, options.compare, output, [Storage(folder) for folder in options.seed_runs or []])
    rows, plots = write_report(
        storage, output, options.seed_runs or [], options.frontier_evaluations, options.select_on
    )
    log.info("report written to %s (%d rows, %d plots)", output, len(rows), len(plots))
    return {"rows": len(rows), "plots": [str(p) for p in plots], "output": str(output)}


if __name__ == "__main__":
    main()
