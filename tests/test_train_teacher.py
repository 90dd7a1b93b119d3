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
