"""make_report.py and the benchmarks on a tiny teacher (they run and write what they promise)."""

import csv
import json
from pathlib import Path

import eval_retrained_12
import make_report
import retrain_single_block
from bench import model_cost, retrain_throughput, sweep_throughput
from conftest import storage_of
from models import assemble
from utils.assembly import collect_attentions
from utils.model_io import save_simplified
from utils.report import budget_of
from utils.teacher import load_teacher


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


def write_results(root: Path, evaluation: str, masks: str, models: dict) -> None:
    folder = root / "results" / evaluation
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"sentences": 100, "masks": masks, "models": models}))


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


def test_several_models_are_evaluated_in_one_pass_on_the_same_masks(run_flags, tiny_teacher_dir, tmp_path):
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


def test_models_fall_in_the_tightest_budget_they_fit():
    assert [budget_of(ratio) for ratio in (1.0, 0.83, 0.74, 0.51, 0.5, 0.4, 0.3, 0.1)] == [
        1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.33, 0.25
    ]  # fmt: skip
    assert budget_of(0.66) == 0.67 and budget_of(0.69) == 0.67 and budget_of(0.70) == 1.0
