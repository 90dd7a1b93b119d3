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
from utils.teacher import load_teacher


def test_report_benchmarks(common_flags, run_flags, tiny_teacher_dir, tmp_path):
    storage = storage_of(common_flags)
    for block in (0, 1):
        for d_k in (4, 8):
            retrain_single_block.main(
                common_flags + ["--block", str(block), "--block_heads", "2", "--block_d_k", str(d_k), "--epochs", "1"]
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

    assert "### Budget: " in text and "![frontier](frontier.png)" in text
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
    assert set(sweep["seconds"]) == {"seed", "cached", "store"} and sweep["store_bytes"] > 0
    assert 0 < sweep["student_training_share_of_peak"] < 1 and sweep["threads"] >= 1
