import json

import train_teacher
from conftest import storage_of
from utils.teacher import load_teacher


def test_train_teacher_saves_a_loadable_teacher_with_an_mlm_head(run_flags, tmp_path):
    output = tmp_path / "teacher"
    flags = [("--init" if flag == "--teacher" else flag) for flag in run_flags()]
    metrics = train_teacher.main(flags + ["--max_steps", "3", "--output_dir", str(output)])
    report = json.loads((output / "eval.json").read_text())
    assert report["step"] == 3 and 0 <= report["top1"] <= report["top5"] <= 1
    assert report["top1"] == metrics["top1"]
    teacher = load_teacher(str(output))
    assert teacher.has_mlm_head and teacher.num_layers == 3
    run = storage_of(run_flags()).run("teacher")
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 3]


def test_plateau_rule_compares_the_last_two_checks():
    records = [{"epoch": 0, "step": 0, "top1": 0.0}, {"epoch": 1, "step": 2, "top1": 0.10}]
    assert not train_teacher.plateau_reached(records, 0.5, 2)  # +10 points
    records.append({"epoch": 1, "step": 4, "top1": 0.104})
    assert train_teacher.plateau_reached(records, 0.5, 2)  # +0.4 points
    assert not train_teacher.plateau_reached(records, 0.5, 3)  # no check 3 steps before the last


def test_train_teacher_stops_at_the_plateau_and_is_finished_on_rerun(run_flags, tmp_path):
    output = tmp_path / "teacher"
    flags = [("--init" if flag == "--teacher" else flag) for flag in run_flags()] + ["--output_dir", str(output)]
    # 100 points: the first check already gains less, so training stops there, long before --max_steps
    plateau = ["--max_steps", "20", "--epochs", "5", "--plateau_points", "100", "--plateau_steps", "2"]
    train_teacher.main(flags + plateau)
    metrics = storage_of(run_flags()).run("teacher") / "metrics.jsonl"
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [0, 2]
    assert json.loads((output / "eval.json").read_text())["step"] == 2
    before = metrics.read_text()
    train_teacher.main(flags + plateau)
    assert metrics.read_text() == before


def test_partial_epoch_checks_survive_a_resumed_run(run_flags, tmp_path):
    """Each chunk of a plateau run is a resumed run stopped mid-epoch: every check stays in metrics.jsonl."""
    flags = [("--init" if flag == "--teacher" else flag) for flag in run_flags()]
    flags += ["--output_dir", str(tmp_path / "teacher"), "--epochs", "5"]
    for steps in ("2", "4"):
        train_teacher.main(flags + ["--max_steps", steps])
    metrics = storage_of(run_flags()).run("teacher") / "metrics.jsonl"
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [0, 2, 4]
