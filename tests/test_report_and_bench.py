"""make_report.py and the benchmarks on a tiny teacher (they run and write what they promise)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import eval_retrained_12
import make_report
import retrain_single_block
from bench import model_cost, retrain_throughput, sweep_throughput
from conftest import one_line_error, storage_of
from models import assemble
from utils.assembly import collect_attentions
from utils.errors import UserError
from utils.model_io import save_simplified
from utils.report import (
    PALE,
    block_grid,
    budget_of,
    compare_models,
    compound_label,
    criteria_grid,
    interval_colours,
    method_of,
    pareto,
    plot_criteria,
    plot_teacher_curve,
    side_of,
)
from utils.storage import BEST, LATEST, BlockRun, Storage
from utils.teacher import load_teacher


def test_the_block_heatmap_shows_the_epoch_each_run_keeps(tmp_path):
    """A run whose last epoch is worse than its best is drawn with its best's top-1: the epoch its models use."""
    storage = Storage(tmp_path)
    folder = storage.run(BlockRun("block", 3, 2, 8).name)
    folder.mkdir(parents=True)
    records = [{"epoch": epoch, "step": 10 * epoch, "replaced_top1": top1} for epoch, top1 in enumerate((0.1, 0.3))]
    records.append({"epoch": 2, "step": 15, "batches_done": 5, "replaced_top1": 0.9})  # part of an epoch: not one
    records.append({"epoch": 2, "step": 20, "replaced_top1": 0.2})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    torch.save({"model": {}, "epoch": 2}, folder / LATEST)
    assert block_grid(storage) == {(2, ""): {(3, 8): 0.2}}  # a run older than best.pt: its last epoch
    torch.save({"model": {}, "epoch": 1}, folder / BEST)
    assert block_grid(storage) == {(2, ""): {(3, 8): 0.3}}


def test_report_benchmarks(run_flags, tiny_teacher_dir, tmp_path):
    storage = storage_of(run_flags())
    for block in (0, 1):
        for d_k in (4, 8):
            retrain_single_block.main(
                run_flags() + ["--block", str(block), "--block_heads", "2", "--block_d_k", str(d_k), "--epochs", "1"]
            )
    teacher = load_teacher(tiny_teacher_dir)
    attentions, _, missing = collect_attentions(storage.root, teacher.model, teacher.name, 2, 8)
    assert sorted(attentions) == [0, 1] and missing == [2]
    save_simplified(assemble(teacher.model, attentions=attentions), teacher.tokenizer, storage.retrained_model(2, 8))
    flags = run_flags(drop=["batch_size", "eval_sentences"])
    eval_retrained_12.main(
        flags + ["--block_heads", "2", "--block_d_k", "8", "--reference", "none", "--latency_repeats", "1"]
    )

    summary = make_report.main(["--storage_directory", str(storage.root)])
    report = storage.report
    assert sorted(Path(p).name for p in summary["plots"]) == [
        "accuracy_vs_parameters.png",
        "frontier.png",
        "top1_heatmap_heads2.png",
    ]
    assert all(
        (report / name).stat().st_size > 1000 for name in ("accuracy_vs_parameters.png", "top1_heatmap_heads2.png")
    )
    rows = list(csv.DictReader(open(report / "report.csv")))
    assert {row["model"] for row in rows} == {"teacher", "retrained_8_2"}
    text = (report / "report.md").read_text()
    assert "### retrained_8_2" in text and "![top1_heatmap_heads2](top1_heatmap_heads2.png)" in text

    assert "### Budget: at most " in text and "![frontier](frontier.png)" in text
    assert " ± " in text and "top1_low" in rows[0] and float(rows[0]["top1_low"]) <= float(rows[0]["top1"])
    compared = make_report.main(["--storage_directory", str(storage.root), "--compare", "retrained_8_2", "teacher"])
    assert compared["top1"]["low"] <= compared["top1"]["difference"] <= compared["top1"]["high"]
    assert compared["sentences"] == 96 and (storage.report / "compare_retrained_8_2_vs_teacher.json").exists()

    cost = model_cost.main(["--teacher", tiny_teacher_dir, "--storage_directory", str(storage.root), "--repeats", "2"])
    assert set(cost["models"]) == {"teacher", "retrained_8_2"}
    assert cost["models"]["retrained_8_2"]["flop_ratio"] < 1 and cost["models"]["teacher"]["speedup_b64"] == 1
    assert (storage.results("model_cost") / "model_cost.md").exists()

    throughput = retrain_throughput.main(flags + ["--block_heads", "2", "--block_d_k", "8", "--batch_size", "16"])
    assert throughput["block"] == 2 and all(throughput[k] > 0 for k in ("seed", "defaults", "cached"))
    written = json.loads(next(storage.root.glob("throughput_*/retrain_throughput.json")).read_text())
    assert written["cached_vs_seed"] == throughput["cached_vs_seed"]

    sweep = sweep_throughput.main(flags + ["--block_heads", "2", "--block_d_k", "8", "--batch_size", "16"])
    assert set(sweep["seconds"]) == {"seed", "cached", "store", "lockstep", "ffn_lockstep"} and sweep["store_bytes"] > 0
    assert 0 < sweep["student_training_share_of_peak"] < 1 and sweep["threads"] >= 1
    assert sweep["ffn_student"] == 32 and 0 < sweep["ffn_students_share_of_peak"] < 1  # half the tiny teacher's 64


def write_results(root: Path, evaluation: str, masks: str, models: dict, sentences: int = 100) -> None:
    folder = root / "results" / evaluation
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"sentences": sentences, "masks": masks, "models": models}))


def test_per_sentence_values_from_another_evaluation_than_their_metrics_are_refused(tmp_path):
    """An evaluation writes per_sentence.npz (with its masks) before metrics.json: a run stopped between the two, or
    files copied from elsewhere, leave values that must not be paired under the other file's masks."""
    from utils.evaluation import MASKS_KEY
    from utils.report import per_sentence_values

    write_results(tmp_path, "test", "new masks", {"teacher": {"top1": 0.5}, "a": {"top1": 0.5}}, sentences=4)
    arrays = tmp_path / "results" / "test" / "per_sentence.npz"
    np.savez(arrays, **{"a/top1": np.array([1.0, 0, 1, 0]), MASKS_KEY: np.array("new masks")})
    assert per_sentence_values(Storage(tmp_path), "a")["new masks"][0] == "test"
    for stale in ({MASKS_KEY: np.array("old masks")}, {"a/top1": np.array([1.0, 0, 1])}):
        np.savez(arrays, **{"a/top1": np.array([1.0, 0, 1, 0]), MASKS_KEY: np.array("new masks"), **stale})
        with pytest.raises(UserError, match="not the per-sentence values of .*metrics.json"):
            per_sentence_values(Storage(tmp_path), "a")


def test_report_pools_the_seeds_of_a_model_evaluated_on_the_same_masks(tmp_path):
    first, second = tmp_path / "seed42", tmp_path / "seed43"
    teacher = {"top1": 0.3}
    write_results(first, "half", "m1", {"teacher": teacher, "a": {"top1": 0.2, "agree_top1": 0.6}, "b": {"top1": 0.1}})
    write_results(second, "half", "m1", {"teacher": teacher, "a": {"top1": 0.3, "agree_top1": 0.8}})
    write_results(second, "other", "m2", {"teacher": teacher, "b": {"top1": 0.5}})  # other masks: not pooled

    make_report.main(["--storage_directory", str(first), "--seed_runs", str(second)])
    pooled = list(csv.DictReader(open(first / "report" / "seeds.csv")))
    assert [row["model"] for row in pooled] == ["a"] and pooled[0]["seeds"] == "2"
    assert abs(float(pooled[0]["top1_mean"]) - 0.25) < 1e-9 and abs(float(pooled[0]["top1_std"]) - 0.0707107) < 1e-6
    text = (first / "report" / "seeds.md").read_text()
    assert "| a | 2 | 25.00% ± 7.07 [20.00, 30.00] | 70.00% ± 14.14 [60.00, 80.00] |" in text
    assert "## Across seeds" in (first / "report" / "report.md").read_text()


def test_best_against_field_chooses_on_the_selection_evaluation_and_compares_on_another(tmp_path, capsys):
    """On validation the field's best is b; on test c would be: chosen on validation, b is compared on test."""
    half = {"flop_ratio": 0.5}
    methods = {"a": "merged_layers", "b": "head_pruning", "c": "layer_drop"}
    splits = {
        "valid": ("mv", {"a": [1, 1, 0, 0], "b": [1, 1, 1, 0], "c": [1, 0, 0, 0]}),
        "test": ("mt", {"a": [1, 1, 1, 0, 0, 0], "b": [1, 0, 0, 0, 0, 0], "c": [1, 1, 1, 1, 1, 0]}),
    }
    for evaluation, (masks, values) in splits.items():
        models = {name: {"top1": float(np.mean(v)), "method": methods[name], "drop_rule": "top", **half}
                  for name, v in values.items()}  # fmt: skip
        write_results(tmp_path, evaluation, masks, {"teacher": {"top1": 0.9}, **models}, len(values["a"]))
        arrays = {f"{name}/top1": np.array(v, dtype=float) for name, v in values.items()}
        np.savez(tmp_path / "results" / evaluation / "per_sentence.npz", **arrays)
    make_report.main(["--storage_directory", str(tmp_path), "--select_on", "valid"])
    [chosen] = json.loads((tmp_path / "report" / "best_against_field.json").read_text())
    assert (chosen["first"], chosen["second"], chosen["selected_on"]) == ("a", "b", "valid")
    assert chosen["top1"]["difference"] == pytest.approx(0.5 - 1 / 6)  # on test's six sentences
    assert "chosen by top-1 on `valid`" in (tmp_path / "report" / "report.md").read_text()
    make_report.main(["--storage_directory", str(tmp_path)])  # chosen where it is reported: c, and said so
    [optimistic] = json.loads((tmp_path / "report" / "best_against_field.json").read_text())
    assert optimistic["second"] == "c" and "optimistic" in (tmp_path / "report" / "report.md").read_text()
    message = one_line_error(capsys, make_report.main, ["--storage_directory", str(tmp_path), "--select_on", "x"])
    assert message.startswith("error: --select_on x: no such evaluation")


def test_best_against_field_compares_over_the_seeds(tmp_path, capsys):
    first, second = tmp_path / "seed42", tmp_path / "seed43"
    half = {"flop_ratio": 0.5}
    per_seed = {  # per-sentence top-1 of sitra's model a and the field's b (and c, under seed 42 only)
        first: {"a": [1, 1, 0, 0], "b": [1, 0, 0, 0], "c": [1, 1, 1, 1]},
        second: {"a": [1, 0, 0, 0], "b": [1, 1, 1, 0]},
    }
    methods = {"a": "merged_layers", "b": "head_pruning", "c": "layer_drop"}
    for root, values in per_seed.items():
        models = {name: {"top1": float(np.mean(v)), "method": methods[name], "drop_rule": "top", **half}
                  for name, v in values.items()}  # fmt: skip
        write_results(root, "frontier", "m1", {"teacher": {"top1": 0.9}, **models}, 4)
        arrays = {f"{name}/top1": np.array(v, dtype=float) for name, v in values.items()}
        np.savez(root / "results" / "frontier" / "per_sentence.npz", **arrays)

    make_report.main(["--storage_directory", str(first), "--seed_runs", str(second)])
    report = first / "report"
    one_seed = json.loads((report / "best_against_field.json").read_text())
    assert [(r["first"], r["second"], r["top1"]["difference"]) for r in one_seed] == [("a", "c", -0.5)]
    pooled = json.loads((report / "best_against_field_seeds.json").read_text())  # c has one seed: not ranked
    assert [(r["first"], r["second"], r["seeds"]) for r in pooled] == [("a", "b", 2)]
    assert abs(pooled[0]["top1"]["difference"] - (0.375 - 0.5)) < 1e-12  # seed-averaged a: [1, .5, 0, 0]
    assert "over 2 seeds: the intervals resample seeds and sentences" in (report / "report.md").read_text()
    compared = make_report.main(["--storage_directory", str(first), "--compare", "a", "b", "--seed_runs", str(second)])
    assert compared["seeds"] == 2 and (report / "compare_a_vs_b_seeds2.json").exists()
    with pytest.raises(SystemExit):  # c under one seed only: one error line, no file
        make_report.main(["--storage_directory", str(first), "--compare", "a", "c", "--seed_runs", str(second)])
    assert "error: --compare a c: no evaluation of c under every one of 2 seeds" in capsys.readouterr().err
    assert not (report / "compare_a_vs_c_seeds2.json").exists()
    (report / "compare_a_vs_b_seeds2.json").unlink()
    with pytest.raises(SystemExit):  # several pairs, one process: the comparable ones are written, the other named
        make_report.main(
            ["--storage_directory", str(first), "--compare", "a", "c", "a", "b", "--seed_runs", str(second)]
        )
    err = capsys.readouterr().err
    assert "error: --compare a c: no evaluation of c" in err
    assert "error: --compare: 1 of 2 pairs could not be compared (each named above)" in err
    assert (report / "compare_a_vs_b_seeds2.json").exists()
    both = make_report.main(["--storage_directory", str(first), "--compare", "a", "b", "b", "a"])
    assert [(r["first"], r["second"]) for r in both["comparisons"]] == [("a", "b"), ("b", "a")]
    with pytest.raises(SystemExit):
        make_report.main(["--storage_directory", str(first), "--compare", "a", "b", "c"])
    assert "error: --compare takes pairs of model names (an even count), got 3" in capsys.readouterr().err

    # a larger evaluation of a and b under seed 42 (the whole split): a single-seed comparison takes it, the
    # seed-averaged one keeps the masks every seed has
    full = {"a": [1, 0] * 4, "b": [0, 0] * 4}
    write_results(first, "full", "m2", {name: {"top1": float(np.mean(v)), **half} for name, v in full.items()}, 8)
    np.savez(first / "results" / "full" / "per_sentence.npz", **{f"{n}/top1": np.array(v) for n, v in full.items()})
    assert compare_models(Storage(first), "a", "b")["sentences"] == 8
    assert compare_models(Storage(first), "a", "b", [Storage(second)])["sentences"] == 4


def test_several_models_are_evaluated_in_one_pass_on_the_same_masks(run_flags, tiny_teacher_dir, tmp_path, capsys):
    teacher = load_teacher(tiny_teacher_dir)
    storage = storage_of(run_flags())
    for name in ("copy_a", "copy_b"):
        save_simplified(assemble(teacher.model), teacher.tokenizer, storage.model(name))
    flags = run_flags(drop=["batch_size", "eval_sentences"]) + ["--reference", "none", "--latency_repeats", "0"]
    models = [str(storage.model(name)) for name in ("copy_a", "copy_b")]
    result = eval_retrained_12.main(flags + ["--models", *models, "--evaluation", "copies"])
    written = json.loads((storage.results("copies") / "metrics.json").read_text())
    assert set(written["models"]) == {"teacher", "copy_a", "copy_b"} == set(result["models"])
    assert (
        written["models"]["copy_a"]["top1"]
        == written["models"]["copy_b"]["top1"]
        == written["models"]["teacher"]["top1"]
    )
    # a folder named as the evaluation's own teacher row, or two of one name, would replace another's figures
    save_simplified(assemble(teacher.model), teacher.tokenizer, storage.root / "elsewhere" / "copy_a")
    for clash, named in (
        ([str(storage.model("teacher"))], "teacher"),
        ([str(storage.root / "elsewhere" / "copy_a")], "copy_a"),
    ):
        error = one_line_error(capsys, eval_retrained_12.main, flags + ["--models", *models, *clash])
        assert f"--models: {named} named twice, or as the evaluation's own teacher/reference" in error


def test_models_fall_in_the_tightest_budget_they_fit():
    assert [budget_of(ratio) for ratio in (1.0, 0.83, 0.74, 0.51, 0.5, 0.4, 0.3, 0.1)] == [
        1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.33, 0.25
    ]  # fmt: skip
    assert budget_of(0.66) == 0.67 and budget_of(0.69) == 0.67 and budget_of(0.70) == 1.0


def test_pareto_keeps_the_points_no_cheaper_point_beats():
    points = [(0.5, 0.20), (0.25, 0.18), (0.33, 0.17), (1.0, 0.30), (0.5, 0.22), (0.67, 0.21)]
    assert pareto(points) == [(0.25, 0.18), (0.5, 0.22), (1.0, 0.30)]


def test_compound_families_come_from_their_recipes():
    field = {"prune_heads": {"heads": 6}, "prune_neurons": {"width": 768, "reconstruct": True}}
    assert compound_label(field) == "head pruning + neuron pruning + least squares"
    assert compound_label({**field, "prune_neurons": {"width": 768}}) == "head pruning + neuron pruning"
    validated = {**field, "prune_neurons": {"width": 768, "reconstruct": "validated"}}
    assert compound_label(validated) == "head pruning + neuron pruning + least squares (validated)"
    sitra = {"feed_forward": {"width": 768}, "attention": {"heads": 6, "d_k": 32}}
    assert compound_label(sitra) == "retrained attention + retrained feed-forward"
    assert compound_label({"drop": {"rule": "top", "count": 3}}) == "layer drop (top)"
    assert method_of({"model": "x", "method": "compound", "recipe": field})[0] == compound_label(field)


def test_criteria_grid_reads_single_block_compounds_and_the_assembled_models(tmp_path):
    """Per block: the teacher with that block's student of each criterion; 'all': the unhealed assembly."""
    rows = []
    for flags, variant in (({}, ""), ({"criterion": "L1"}, "-l1")):
        for block in (0, 1):
            recipe = {"attention": {"heads": 6, "d_k": 32, "flags": flags, "layers": [block]}}
            rows.append({"model": f"b{block}{variant}", "method": "compound", "recipe": recipe,
                         "top1_vs_teacher": -0.01 * (block + 1), "top1_vs_teacher_low": -0.02 * (block + 1),
                         "top1_vs_teacher_high": 0.005 - 0.01 * block, "agree_top1": 0.9})  # fmt: skip
        assembled = {"model": f"retrained_32_6{variant}", "top1_vs_teacher": -0.03, "agree_top1": 0.8}
        rows += [assembled, {**assembled, "model": f"retrained_32_6{variant}_finetuned", "healing_steps": 5}]
    rows.append({"model": "two_layers", "method": "compound", "recipe": {"attention": {"heads": 6, "d_k": 32}}})
    grid, criteria = criteria_grid(rows)
    assert criteria == ["mse", "l1"] and set(grid) == {(b, c) for b in ("0", "1", "all") for c in criteria}
    assert grid[("1", "l1")]["model"] == "b1-l1" and grid[("all", "mse")]["model"] == "retrained_32_6"
    assert plot_criteria(rows, tmp_path).exists()


def test_heatmap_cells_whose_interval_contains_zero_are_pale():
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    values = np.array([[-2.0, -2.0, np.nan]])
    significant = np.array([[True, False, False]])
    cmap, norm = colormaps["RdBu"], Normalize(-2, 2)
    colours = interval_colours(values, significant, cmap, norm)
    assert np.allclose(colours[0, 0], cmap(norm(-2.0)))  # significant: the scale's own colour
    assert np.allclose(colours[0, 1, :3], 1 - PALE * (1 - np.array(cmap(norm(-2.0))[:3])))  # same hue, paler
    assert (colours[0, 1, :3] > colours[0, 0, :3]).all() and np.allclose(colours[0, 2], 1.0)


def test_the_teacher_curve_is_drawn_from_its_checks(tmp_path):
    storage = Storage(tmp_path)
    run = storage.run("teacher")
    run.mkdir(parents=True)
    records = [{"epoch": 0, "step": 0, "top1": 0.0}, {"epoch": 1, "step": 500, "top1": 0.2, "batches_done": 500}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert plot_teacher_curve(storage, tmp_path).name == "teacher_curve.png"
    assert plot_teacher_curve(Storage(tmp_path / "empty"), tmp_path) is None


def test_models_are_sitras_or_the_fields_by_how_they_were_made():
    students = {"attention": {"heads": 6, "d_k": 32}, "prune_neurons": {"width": 768}}
    assert side_of({"model": "a", "method": "compound", "recipe": students}) == "sitra"
    assert side_of({"model": "b", "method": "compound", "recipe": {"drop": {"rule": "top", "count": 3}}}) == "field"
    assert side_of({"model": "c", "method": "merged_layers"}) == "sitra"
    assert side_of({"model": "d", "method": "head_pruning"}) == "field" and side_of({"model": "teacher"}) == "teacher"


def test_the_generated_tables_of_the_docs_are_what_their_committed_data_gives():
    from pathlib import Path

    from utils.docs_tables import SECTION, regenerated_documents

    repo = Path(__file__).resolve().parents[1]
    sections = 0
    for path, (text, generated) in regenerated_documents(repo).items():
        sections += len(SECTION.findall(text))
        assert generated == text, f"{path.name}: run make_report.py --docs"
    assert sections >= 1


def test_a_model_name_names_one_model_in_every_committed_study():
    """Over every study's committed data (docs/data/*/models.csv): one (seed, model, healing, evaluation) is one row,
    so a name says which model it is (a variant's models carry its name after an @)."""
    import csv
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    seen = {}
    for table in sorted((repo / "docs" / "data").glob("*/models.csv")):
        with open(table, newline="") as file:
            for row in csv.DictReader(file):
                key = row["seed"], row["model"], row["healing"], row["evaluation"]
                figures = row["top1"], row["recipe"], row["sentences"]
                assert seen.setdefault(key, figures) == figures, f"{table}: {key} names two models"
    assert len(seen) > 100


def test_every_page_prints_each_comparison_with_one_p_and_one_interval():
    """Every generated table row of the docs that names a comparison (kind, budget, healing, first, second) prints one
    adjusted p for it, on every page (one study's data: one Holm family; until round three was one study, its 33%
    pair showed Holm p 0.0012 in its own section and 0.037 in the headline's family)."""
    import re
    from pathlib import Path

    from utils.docs_tables import DOCUMENTS

    repo = Path(__file__).resolve().parents[1]
    printed = {}
    row = re.compile(r"^\| (declared|best) \| (\d+%) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|(.*)$")
    for name in DOCUMENTS:
        for line in (repo / name).read_text().splitlines():
            match = row.match(line)
            if match:
                cells = [cell.strip() for cell in match[6].split("|")]
                found = [cell for cell in cells if re.fullmatch(r"\*{0,2}[0-9.e-]+\*{0,2}", cell)]
                key = tuple(part.strip() for part in match.groups()[1:5])
                printed.setdefault(key, set()).add(found[-1] if found else "exploratory")  # its Holm p
    assert printed and all(len(values) == 1 for values in printed.values()), {
        key: values for key, values in printed.items() if len(values) > 1
    }


def test_a_study_not_evaluated_yet_has_a_headline_row_per_planned_budget(tmp_path):
    from utils.docs_tables import headline_of_study

    (tmp_path / "study.json").write_text(json.dumps({"budgets": [0.67, 0.5], "goals": {"0.5": 0.97}}))
    rows = headline_of_study(tmp_path).splitlines()[2:]
    assert rows == ["| 67% | not measured yet | | | none set |", "| 50% | not measured yet | | | 97%: not yet |"]


def test_speed_goals_are_judged_on_every_run(tmp_path):
    import json

    from utils.docs_tables import speed_markdown

    def run(speedup):
        rows = [
            {"model": "teacher", "runtime": "ort_fused", "batch_size": 1, "ms": 10.0, "flop_reduction": 1.0},
            {"model": "m", "runtime": "ort_fused", "batch_size": 1, "speedup": speedup, "flop_reduction": 2.0},
            {"model": "m", "runtime": "ort_fused", "batch_size": 64, "speedup": 1.6, "flop_reduction": 2.0},
        ]
        return {"rows": rows}

    (tmp_path / "latency_run1.json").write_text(json.dumps(run(1.85)))
    (tmp_path / "latency_run2.json").write_text(json.dumps(run(1.75)))
    text = speed_markdown(tmp_path)
    assert "| m | 2.00× | 1.75–1.85× |" in text
    assert "fused fp32 1.75–1.85× (m): met in one run" in text
    assert "the lowest ratio: fused fp32 0.80 (missed)" in text


def test_the_matmul_peak_bench_measures_each_precision_asked_for(tmp_path):
    from bench.matmul_peak import main as matmul_peak

    result = matmul_peak(["--shape", "128", "128", "128", "--repeats", "2", "--warmup", "0", "--output", str(tmp_path)])
    assert set(result["gflops"]) == {"fp32", "bf16"} and result["gflops"]["fp32"] > 0
    saved = json.loads((tmp_path / "matmul_peak.json").read_text())
    assert saved["shape"] == [128, 128, 128] and "| fp32 |" in (tmp_path / "matmul_peak.md").read_text()
