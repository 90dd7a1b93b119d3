"""Studies as files: the plan's shapes from the teacher's, the study file's checks, and a tiny study run end to end
through Snakemake, here and on a real one-node SLURM with accounting."""

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO
from models.cost import width_for_budget
from utils.errors import UserError
from utils.evaluation import PER_SENTENCE, TEACHER
from utils.study import SHAPES, Plan, Study, TeacherShape
from utils.study_report import TRAINING_KINDS, write_study_data

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile")]


def tiny_study(folder: Path, teacher_dir: str, **changes) -> Path:
    """Two budgets, two families (sitra's students, the field's pruning), one seed, on the tiny teacher."""
    study = {
        "name": "tiny",
        "teacher": {"path": teacher_dir},
        "data": {
            "train_sentences": 96,
            "check_sentences": 32,
            "heal_sentences": 64,
            "seq_len": 20,
            "batch_size": 16,
            # the stopping rule, set so that every student stops after its first epoch: its loss must fall by 99%
            "student_epochs": 3,
            "student_stop_patience": 1,
            "student_stop_min_delta": 0.99,
        },
        "seeds": [42],
        "budgets": [0.5, 0.25],
        "families": {
            "sitra": {
                "method": "students",
                "attention_share": {"default": 0.5, 0.25: 0.25},
                "feed_forward": {"ffn_init": "neurons"},
            },
            "field": {"method": "pruning", "attention_share": {"default": 0.5, 0.25: 0.25}, "reconstruct": True},
        },  # fmt: skip
        "healing": {"kl": {"train_layers": True}},
        "comparisons": [["sitra", "field"], "best"],
        **changes,
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def snakemake(workdir: Path, study: Path, storage: Path, data_dir: str, *args: str, env=None, timeout=300):
    config = [f"study={study}", f"storage={storage}", f"data_dir={data_dir}", f"python={sys.executable}"]
    return subprocess.run(
        [*SNAKEMAKE, "-d", str(workdir), *args, "--config", *config],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_widths_come_from_the_budget_left_after_the_attention():
    """Round two's widths at the offline teacher's shape (hidden 384, 12 x 32, 1536), and bert-base's."""
    minilm, base = (TeacherShape(**SHAPES[name]) for name in ("minilm", "bert-base"))
    widths = [minilm.width(budget, 40, heads) for budget, heads in ((0.67, 6), (0.5, 6), (0.33, 6), (0.25, 3))]
    assert widths == [1152, 768, 384, 384]
    assert minilm.width(0.5, 40, 3) == 960 and minilm.width(0.5, 40, 12) == 384  # the budget split either way
    assert minilm.width(0.33, 40, 12, layers=3) == 768  # half the layers kept
    assert [base.width(budget, 40, 6) for budget in (0.67, 0.5, 0.33)] == [2304, 1536, 768]
    assert width_for_budget(1.2, 6, 384, 12, 32, 1536, 40, kept_heads=12) == 1536  # never wider than the teacher
    assert width_for_budget(0.05, 6, 384, 12, 32, 1536, 40, kept_heads=12) == 64  # at least one multiple


def test_a_family_asked_for_a_budget_it_cannot_reach_is_refused(tmp_path, tiny_teacher_dir):
    study = tiny_study(tmp_path, tiny_teacher_dir)
    Plan(Study.load(study), tmp_path / "root", "python")  # reachable: planned
    bad = tiny_study(
        tmp_path, tiny_teacher_dir, families={"merged": {"method": "merged_pairs", "budgets": [0.25]}}, comparisons=[]
    )
    with pytest.raises(UserError, match=r"families.merged: merged at 25%: its model lands at 6\d.\d%"):
        Plan(Study.load(bad), tmp_path / "root", "python")
    # without ``budgets`` a family is planned where it lands, and the others are said
    quiet = tiny_study(tmp_path, tiny_teacher_dir, families={"merged": {"method": "merged_pairs"}}, comparisons=[])
    plan = Plan(Study.load(quiet), tmp_path / "root", "python")
    assert plan.models == [] and len(plan.skipped) == 2 and "not planned: merged at 50%" in plan.describe()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"budgets": [50]}, "budgets.0: 50: expected a value <= 1"),
        ({"families": {"x": {"method": "pruning", "width": 3}}}, r"families.x: pruning takes no \['width'\]"),
        ({"comparisons": [["sitra", "nobody"]]}, r"comparisons: \['sitra', 'nobody'\]: no family nobody in the study"),
        ({"data": {"epochs": 3}}, "data.epochs: unknown key 'epochs' \\(expected one of batch_size"),
        ({"teacher": {"shape": "bert-base"}}, "teacher: expected exactly one of 'path'"),
        (
            {"families": {"x": {"method": "pruning", "reconstruct": "ridge"}}},
            r"families.x.reconstruct: 'ridge': expected boolean or one of least_squares, validated",
        ),
    ],
)
def test_a_bad_study_file_is_one_error_naming_the_key(tmp_path, tiny_teacher_dir, change, message):
    with pytest.raises(UserError, match=message):
        Study.load(tiny_study(tmp_path, tiny_teacher_dir, **change))


def test_a_named_shape_is_checked_against_a_local_teachers_config(tmp_path, tiny_teacher_dir):
    """A part names its teacher's shape to plan without loading it; a local teacher of another shape is refused
    (a round-three part pointed at bert-base would plan the offline teacher's widths)."""
    study = tiny_study(tmp_path, "unused", teacher={"path": str(tiny_teacher_dir), "shape": "minilm"})
    with pytest.raises(UserError, match=r"teacher.shape: minilm is 6 layers, hidden 384, 12 heads, feed-forward 1536, "
                                        r"but .*config.json says 3 layers, hidden 32"):  # fmt: skip
        Plan(Study.load(study), tmp_path / "root", "python")
    absent = tiny_study(tmp_path, "unused", teacher={"path": str(tmp_path / "not_trained_yet"), "shape": "minilm"})
    assert Plan(Study.load(absent), tmp_path / "root", "python").shape.hidden == 384  # planned before it exists


def test_a_field_family_names_its_reconstruction_and_true_keeps_the_committed_recipes(tmp_path, tiny_teacher_dir):
    families = {
        "ls": {"method": "pruning", "attention_share": 0.5, "reconstruct": True},
        "lsv": {"method": "pruning", "attention_share": 0.5, "reconstruct": "validated"},
        "plain": {"method": "pruning", "attention_share": 0.5},
        "dropped": {"method": "layer_drop", "reconstruct": "validated"},
    }
    study = tiny_study(tmp_path, tiny_teacher_dir, families=families, comparisons=[], budgets=[0.5])
    plan = Plan(Study.load(study), tmp_path / "root", "python")
    spelled = {model.family: model.recipe["prune_neurons"]["reconstruct"] for model in plan.models}
    assert spelled == {"ls": True, "lsv": "validated", "plain": False, "dropped": "validated"}


def test_the_plan_of_a_bert_base_study_derives_its_shapes_from_3072_and_12_x_64(tmp_path):
    """The dry run of the bert-base study file (no weights needed: the study names the shape) on the engine."""
    dry = subprocess.run(
        [*SNAKEMAKE, "-d", str(tmp_path), "-n", "-p", "--config", f"study={REPO / 'studies' / 'bert_base.yaml'}",
         f"storage={tmp_path / 'base'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr[-3000:]
    plan = dry.stderr + dry.stdout
    assert "12 layers, hidden 768, 12 heads x 64, feed-forward 3072" in plan
    assert "sitra_heads_50" in plan and "heads 6, ffn 1536" in plan and "heads 3, ffn 768" in plan
    assert "--block_heads 6 --block_d_k 64" in plan and "--ffn_width 2304" in plan
    assert "--ffn_width 384" not in plan and "--block_d_k 32" not in plan  # nothing of the offline teacher's
    assert not (tmp_path / "base").exists()  # a dry run writes nothing


def check_tiny_study(storage: Path) -> None:
    """The tiny study's data: four healed models and the teacher on both splits, the declared comparison and each
    side's best (chosen on validation) at both budgets, Holm-corrected together; the page made from them."""
    with open(storage / "data" / "models.csv") as file:
        models = list(csv.DictReader(file))
    test = {row["model"]: row for row in models if row["evaluation"] == "test" and row["healing"] == "kl"}
    assert set(test) == {"sitra_50", "sitra_25", "field_50", "field_25"}
    assert {row["model"] for row in models} == set(test) | {"teacher"}
    assert {row["evaluation"] for row in models} == {"test", "validation"}
    assert abs(float(test["sitra_25"]["flops_share"]) - 0.25) < 0.02 and test["field_50"]["side"] == "field"
    with open(storage / "data" / "comparisons.csv") as file:
        comparisons = list(csv.DictReader(file))
    pairs = [(row["kind"], row["first"], row["second"]) for row in comparisons]
    assert pairs == [(kind, f"sitra_{b}", f"field_{b}") for kind in ("declared", "best") for b in (50, 25)]
    assert all(
        float(row["top1_low"]) <= float(row["top1_difference"]) <= float(row["top1_high"]) for row in comparisons
    )
    assert [row["candidates"] for row in comparisons if row["kind"] == "best"] == ["1 vs 1", "1 vs 1"]
    assert all(float(row["holm_p"]) >= float(row["top1_p_value"]) for row in comparisons)
    # each budget's declared pair is also each side's best (one candidate each): 2 tests under 4 rows
    assert {row["holm_tests"] for row in comparisons} == {"2"}
    assert [row["holm_p"] for row in comparisons[:2]] == [row["holm_p"] for row in comparisons[2:]]
    page = (storage / "report" / "study.md").read_text()
    assert "4 comparisons (2 distinct tests: " in page and "| 25% | sitra_25 (kl) |" in page
    from utils.docs_tables import GENERATORS  # the docs' section of the same comparisons, from the data alone

    section = GENERATORS["study_comparisons"](storage / "data")
    assert section.startswith("4 comparisons (2 distinct tests: ") and section.count("| best |") == 2
    with open(storage / "data" / "students.csv") as file:
        curves = list(csv.DictReader(file))
    last = {}
    for row in curves:
        last[row["run"]] = row
    assert {row["student"].split()[0] for row in curves} == {"attention", "feed-forward"}
    assert all(row["epoch"] == "1" and row["stopped_early"] == "True" for row in last.values()), last
    assert all(sum(row["kept"] == "True" for row in curves if row["run"] == run) == 1 for run in last)
    assert not (storage / "data" / "students.png").exists()  # one epoch each: no curve to draw
    assert "the students' training" in page
    from utils.evaluation import MASKS_KEY  # an evaluation's per-sentence values name the masks they were made on

    results = storage / "seed42" / "results" / "test"
    with np.load(results / PER_SENTENCE) as arrays:
        assert str(arrays[MASKS_KEY]) == json.loads((results / "metrics.json").read_text())["masks"]


@pytest.fixture(scope="module")
def tiny_study_run(tmp_path_factory, tiny_teacher_dir, tiny_data_dir):
    """The tiny study run once through the engine on this machine; its folders, and how long the run took. Both
    tests below read it: the SLURM one reruns its last levels as cluster jobs, so it runs after this one's checks
    whichever test asks first."""
    workdir = tmp_path_factory.mktemp("tiny_study")
    study, storage = tiny_study(workdir, tiny_teacher_dir), workdir / "study"
    started = time.time()
    run = snakemake(workdir, study, storage, tiny_data_dir, "--cores", "2")
    assert run.returncode == 0, run.stderr[-5000:]
    return workdir, study, storage, time.time() - started


def test_a_tiny_study_runs_end_to_end_through_the_engine_and_a_rerun_does_nothing(
    tiny_study_run, tiny_teacher_dir, tiny_data_dir
):
    workdir, study, storage, elapsed = tiny_study_run
    check_tiny_study(storage)
    stage_times = list((storage / "benchmarks").rglob("*.tsv"))
    # every stage's time, by the engine: the store, 4 students, 4 models, their healing (one run, in lockstep), 2
    # evaluations
    assert len(stage_times) == 12
    with open(storage / "data" / "stage_times.csv") as file:
        timed = list(csv.DictReader(file))
    assert len(timed) == 12 and all(float(row["seconds"]) > 0 for row in timed)
    assert {row["kind"] for row in timed} == {
        "store",
        "attention_students",
        "ffn_students",
        "model",
        "heal",
        "evaluate",
    }
    # every stage that trains counted its FLOPs, read against the machine's peak the workflow measured
    trained = {row["kind"] for row in timed if row["train_flops"]}
    assert trained == {"store", "attention_students", "ffn_students", "heal"}
    assert all(0 < float(row["share_of_fp32_peak"]) < 1 for row in timed if row["train_flops"])
    with open(storage / "data" / "models.csv") as file:
        cost = {(row["model"], row["evaluation"]): float(row["train_flops"]) for row in csv.DictReader(file)
                if row["healing"]}  # fmt: skip
    # sitra's model carries its store's and students' FLOPs besides its healing; the field's its healing alone
    assert cost["sitra_50", "test"] > cost["field_50", "test"] > 0
    again = snakemake(workdir, study, storage, tiny_data_dir, "--cores", "2")
    assert again.returncode == 0 and "Nothing to be done" in again.stderr, again.stderr[-3000:]
    # a changed study re-plans only what changed: a longer healing re-heals and re-evaluates, builds nothing
    (workdir / "longer").mkdir()  # a file of its own: the SLURM test below reruns the study as it was
    longer = tiny_study(
        workdir / "longer", tiny_teacher_dir, data={**yaml.safe_load(study.read_text())["data"], "heal_epochs": 2}
    )
    saved_plans = sorted((workdir / ".snakemake" / "sitra").glob("*.json"))
    assert len(saved_plans) == 1  # the run's
    dry = snakemake(workdir, longer, storage, tiny_data_dir, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert sorted((workdir / ".snakemake" / "sitra").glob("*.json")) == saved_plans  # a dry run saves no plan
    counts = dict(re.findall(r"^(\w+) +(\d+)$", dry.stdout + dry.stderr, re.MULTILINE))
    assert counts["heal"] == "1" and "model" not in counts and "ffn_students" not in counts
    assert elapsed < 180, f"the tiny study took {elapsed:.0f} s"  # about 100 s on an idle 2-core CPU


def test_a_tiny_study_runs_through_the_slurm_executor(
    slurm_accounting, tiny_study_run, tiny_teacher_dir, tiny_data_dir
):
    """A stage runs as a SLURM job, its state read back with sacct (the cluster's accounting): the tiny study's
    report (make_report.py reading every evaluation the stages before it left), run again on a real one-node
    cluster through the cluster profile. What the executor adds is the same for every stage; the stages below
    it are the scripts the local run above ran (each level of jobs costs about 30 s of the executor's status
    checks here, so the test submits one)."""
    workdir, study, storage, _ = tiny_study_run
    check_tiny_study(storage)  # whichever test ran first, the local run's results are whole before the rerun
    report = storage / "data" / "models.csv"
    written = report.stat().st_mtime_ns
    env = {**slurm_accounting, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # the cluster profile of docs/OPERATIONS.md, its resources sized down for the one-node test cluster
    args = ["--profile", str(REPO / "workflow" / "profiles" / "slurm"), "--jobs", "4", "--retries", "0",
            "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2",
            "--default-resources", "runtime=10", "mem_mb=1500", "cpus_per_task=1",
            "--forcerun", "report"]  # fmt: skip
    run = snakemake(workdir, study, storage, tiny_data_dir, *args, env=env, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    logs = list((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(logs) == 1  # one job per stage: the report
    assert report.stat().st_mtime_ns > written  # the report was written again, by the cluster's job
    check_tiny_study(storage)
    accounted = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobName,State", "--starttime", "now-1hour"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert len(accounted) == 1 and all(line.endswith("|COMPLETED") for line in accounted)


def test_a_study_run_in_parts_reports_the_seeds_it_has(tiny_study_run, tiny_teacher_dir, tmp_path):
    """Two seeds planned, one evaluated so far: every comparison is over that seed alone, reported and
    Holm-corrected as such, and the first table says over how many of the study's seeds."""
    shutil.copytree(tiny_study_run[2] / "seed42" / "results", tmp_path / "part" / "seed42" / "results")
    plan = Plan(Study.load(tiny_study(tmp_path, tiny_teacher_dir, seeds=[42, 43])), tmp_path / "part", sys.executable)
    write_study_data(plan)
    with open(plan.data_files["comparisons"]) as file:
        comparisons = list(csv.DictReader(file))
    assert len(comparisons) == 4 and all(row["seed"] == "42" and row["seeds"] == "1" for row in comparisons)
    assert all(row["holm_p"] for row in comparisons)
    page = (tmp_path / "part" / "report" / "study.md").read_text()
    assert "| 25% | sitra_25 (kl; 1 of 2 seeds) |" in page


def test_a_study_over_two_seeds_reports_each_seed_and_both_with_the_seeds_resampled(tiny_study_run, tiny_teacher_dir,
                                                                                     tmp_path):  # fmt: skip
    """Seed 43's results made from seed 42's (the same masks: the study's mask seed) with field_50 one sentence in
    five better: each seed's difference, their spread, both seeds' mean difference with an interval that holds
    the seeds' spread (wider than either seed's), and the docs' seed-by-seed table, from the data alone."""
    from utils.docs_tables import GENERATORS

    root = tmp_path / "two"
    for seed in (42, 43):
        shutil.copytree(tiny_study_run[2] / "seed42" / "results", root / f"seed{seed}" / "results")
    npz = root / "seed43" / "results" / "test" / PER_SENTENCE
    arrays = dict(np.load(npz))
    key = next(name for name in arrays if name.startswith("field_50") and name.endswith("/top1"))
    arrays[key] = np.where(np.arange(len(arrays[key])) % 5 == 0, 1.0, arrays[key])
    np.savez(npz, **arrays)
    for seed, every in ((42, 2), (43, 3)):  # the tiny teacher predicts nothing: give it a top-1 to share
        npz = root / f"seed{seed}" / "results" / "test" / PER_SENTENCE
        arrays = dict(np.load(npz))
        arrays[f"{TEACHER}/top1"] = (np.arange(len(arrays[f"{TEACHER}/top1"])) % every == 0).astype(np.float32)
        np.savez(npz, **arrays)
    plan = Plan(Study.load(tiny_study(tmp_path, tiny_teacher_dir, seeds=[42, 43])), root, sys.executable)
    write_study_data(plan)
    with open(plan.data_files["comparisons"]) as file:
        rows = [row for row in csv.DictReader(file) if row["kind"] == "declared" and row["first"] == "sitra_50"]
    by_seed = {row["seed"]: row for row in rows}
    assert set(by_seed) == {"42", "43", "all"} and by_seed["all"]["seeds"] == "2" and by_seed["all"]["holm_p"]
    differences = [float(by_seed[seed]["top1_difference"]) for seed in ("42", "43")]
    assert differences[1] < differences[0]  # field_50 better under seed 43
    both = by_seed["all"]
    assert float(both["top1_difference"]) == pytest.approx(sum(differences) / 2)
    assert float(both["top1_seed_spread"]) == pytest.approx(differences[0] - differences[1])
    width = {seed: float(by_seed[seed]["top1_high"]) - float(by_seed[seed]["top1_low"]) for seed in by_seed}
    assert width["all"] > max(width["42"], width["43"])
    section = GENERATORS["study_seeds"](root / "data")
    assert "| seed 42 | seed 43 | seed spread | every seed (seeds and sentences resampled) |" in section
    assert section.count("| declared |") == 2  # the two budgets, each one row
    # the headline's share of the teacher over both seeds resamples the seeds too, as the lead does
    from utils.statistics import seed_and_sentence_difference
    from utils.study import healed_name

    with open(plan.data_files["comparisons"]) as file:
        best = next(row for row in csv.DictReader(file) if row["kind"] == "best" and row["seed"] == "all")
    per_seed = [np.load(root / f"seed{seed}" / "results" / "test" / PER_SENTENCE) for seed in (42, 43)]
    model = healed_name(best["first"], best["healing"])
    first, teacher = (np.stack([arrays[f"{name}/top1"] for arrays in per_seed]) for name in (model, TEACHER))
    expected = seed_and_sentence_difference(first, teacher)
    shares = [1 + expected[key] / teacher.mean() for key in ("difference", "low", "high")]
    assert [float(best[f"first_share{end}"]) for end in ("", "_low", "_high")] == pytest.approx(shares, abs=1e-6)
    headline = GENERATORS["study_headline"](root / "data")
    assert "{:.1%} [{:.1%}, {:.1%}]".format(*shares) in headline


def test_a_study_report_is_rebuilt_from_its_raw_results_alone(tiny_study_run, tmp_path):
    """The raw results the report copies under data/raw (each evaluation's metrics.json and per-sentence outcomes),
    copied into a fresh root without models, students or stamps, give the same tables."""
    storage, raw = tiny_study_run[2], tiny_study_run[2] / "data" / "raw"
    files = sorted(str(path.relative_to(raw)) for path in raw.rglob("*") if path.is_file())
    plan = Plan(Study.load(tiny_study_run[1]), storage, sys.executable)
    trained = set(TRAINING_KINDS) - {"model"}  # the tiny study's models are built, not trained (no CoFi)
    counted = [f"flops/{seed}/{kind}/{name}.json" for kind, seed, name in sorted(plan.stages) if kind in trained]
    evaluated = [f"seed42/results/{split}/{name}" for split in ("test", "validation")
                 for name in ("metrics.json", PER_SENTENCE)]  # fmt: skip
    assert files == [*counted, "openings/seed42/test.log", *evaluated]
    shutil.copytree(raw, tmp_path / "fresh")
    write_study_data(Plan(Study.load(tiny_study_run[1]), tmp_path / "fresh", sys.executable))
    for table in ("models.csv", "comparisons.csv"):
        assert (tmp_path / "fresh" / "data" / table).read_text() == (storage / "data" / table).read_text()


def test_test_results_opened_under_another_study_file_are_refused(tiny_study_run, tmp_path):
    """The workflow recorded when the test split was opened and under which study file; the report refuses the
    test results once the study file has changed (a comparison added after reading them), not before."""
    storage, study = tiny_study_run[2], tiny_study_run[1]
    opened = (storage / "openings" / "seed42" / "test.log").read_text().split()
    assert len(opened) == 2 and opened[1] == hashlib.sha256(study.read_bytes()).hexdigest()
    shutil.copytree(storage / "data" / "raw", tmp_path / "root")
    changed = tmp_path / "tiny.yaml"
    changed.write_text(study.read_text().replace("comparisons:", "goals: {0.5: 0.9}\ncomparisons:"))
    with pytest.raises(UserError, match=r"tiny.yaml: changed since seed42's test split was opened under it"):
        write_study_data(Plan(Study.load(changed), tmp_path / "root", sys.executable))


def test_a_relative_teacher_path_is_read_from_the_studys_root(tmp_path, tiny_teacher_dir):
    """A sibling study's trained teacher: ``../round3/teacher`` from this study's root, wherever the roots are."""
    shutil.copytree(tiny_teacher_dir, tmp_path / "first" / "teacher")
    study = tiny_study(tmp_path, tiny_teacher_dir, teacher={"path": "../first/teacher"})
    plan = Plan(Study.load(study), tmp_path / "second", sys.executable)  # its shape read from that teacher's config
    assert plan.teacher == str(tmp_path / "first" / "teacher")
    assert f"--teacher {tmp_path / 'first' / 'teacher'} " in plan.shell_command("store", "seed42", "store")
    hub_teacher = {"path": "bert-base-uncased", "shape": "bert-base"}
    hub = Plan(Study.load(tiny_study(tmp_path, tiny_teacher_dir, teacher=hub_teacher)), tmp_path, sys.executable)
    assert hub.teacher == "bert-base-uncased"  # a hub id is as given


def test_every_seed_trains_with_its_own_seed_and_is_evaluated_on_the_same_masks(tmp_path, tiny_teacher_dir):
    """Seeds 42 and 43: each seed's training stages take its seed; both seeds' evaluations take the study's mask
    seed (42 unless the study says otherwise), so the two seeds' models pair sentence by sentence."""
    plan = Plan(Study.load(tiny_study(tmp_path, tiny_teacher_dir, seeds=[42, 43])), tmp_path, sys.executable)
    for seed in (42, 43):
        assert f"--seed {seed} " in plan.shell_command("heal", f"seed{seed}", "kl") + " "
        for split in ("validation", "test"):
            assert "--seed 42 " in plan.shell_command("evaluate", f"seed{seed}", split) + " "
    data = {"train_sentences": 96, "heal_sentences": 64, "seq_len": 20, "mask_seed": 7}
    other = Plan(Study.load(tiny_study(tmp_path, tiny_teacher_dir, seeds=[43], data=data)), tmp_path, sys.executable)
    assert "--seed 7 " in other.shell_command("evaluate", "seed43", "test") + " "
    assert "--seed 43 " in other.shell_command("heal", "seed43", "kl") + " "


def test_the_test_split_is_opened_once_every_model_of_every_seed_has_its_validation_evaluation(
    tmp_path, tiny_teacher_dir
):
    plan = Plan(Study.load(tiny_study(tmp_path, tiny_teacher_dir, seeds=[42, 43])), tmp_path, sys.executable)
    validations = {("evaluate", f"seed{seed}", "validation") for seed in (42, 43)}
    for seed in (42, 43):
        assert validations <= set(plan.stage("evaluate", f"seed{seed}", "test").needs)
        assert not validations & set(plan.stage("evaluate", f"seed{seed}", "validation").needs)


def test_a_studys_precision_reaches_every_training_stage_and_none_leaves_each_scripts_auto(tmp_path, tiny_teacher_dir):
    """data.precision fp32: a GPU run of the study is the CPU run's experiment (autocast off in every stage that
    trains); absent, no stage is given --precision (auto: bf16 on a GPU); anything else is one error naming it."""
    data = {"train_sentences": 96, "heal_sentences": 64, "seq_len": 20, "precision": "fp32"}
    plan = Plan(Study.load(tiny_study(tmp_path, tiny_teacher_dir, data=data)), tmp_path, sys.executable)
    given = {stage.key: "--precision fp32" in plan.shell_command(*stage.key) for stage in plan.stages.values()}
    training = {"attention_students", "ffn_students", "heal"}
    assert {kind for kind, _, _ in given} >= training | {"store", "model", "evaluate"}
    assert {key for key, has in given.items() if has} == {key for key in given if key[0] in training}
    plain = Plan(Study.load(tiny_study(tmp_path, tiny_teacher_dir)), tmp_path, sys.executable)
    assert not [stage.key for stage in plain.stages.values() if "--precision" in stage.command]
    # a teacher the study trains is trained in its precision too (round three's fp32 teacher is not retrained in bf16)
    trained = {"train": {"init": "minilm", "max_steps": 3}, "shape": "minilm"}
    plan = Plan(Study.load(tiny_study(tmp_path, tiny_teacher_dir, data=data, teacher=trained)), tmp_path, "python")
    assert "--precision fp32" in plan.shell_command("teacher", "shared", "teacher")
    with pytest.raises(UserError, match="data.precision: 'fp64': expected one of None, auto, fp32, bf16, fp16"):
        Study.load(tiny_study(tmp_path, tiny_teacher_dir, data={**data, "precision": "fp64"}))


@pytest.mark.parametrize("name", sorted(path.stem for path in (REPO / "studies").glob("*.yaml")))
def test_every_study_file_plans_stages_the_workflow_has_rules_for(name, tmp_path):
    from utils.study import KINDS

    plan = Plan(Study.load(REPO / "studies" / f"{name}.yaml"), tmp_path, "python")
    assert plan.models and {stage.kind for stage in plan.stages.values()} <= set(KINDS)
    assert all(set(stage.needs) <= set(plan.stages) for stage in plan.stages.values())  # no need left unplanned
    assert not [stage.key for stage in plan.stages.values() if "None" in stage.command]  # no flag given a null
    built = [stage for stage in plan.stages.values() if stage.kind == "model" and "--epochs" in stage.command]
    assert not [stage.key for stage in built if "--max_sentences" in stage.command]  # a merged model is only built
    assert all("--no_resume" in stage.command for stage in built)  # anew when its stage runs again
    if "train" in plan.study.teacher:  # every stage that reads the teacher the study trains runs after it
        teacher_key = ("teacher", "shared", "teacher")
        for stage in plan.stages.values():
            if plan.teacher in stage.command and stage.key != teacher_key:
                assert teacher_key in upstream(plan, stage.key), stage.key
    # every stage's resources as the SLURM executor checks them when it submits (a dry run does not)
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    class Resources(dict):
        __getattr__ = dict.get

    for kind in {stage.kind for stage in plan.stages.values()} | {"report"}:
        job = type("Job", (), {"resources": Resources(plan.resources(kind))})()
        validate_slurm_extra(job)  # each raises the executor's WorkflowError on what it would refuse
        set_gres_string(job)


def upstream(plan: Plan, key: tuple) -> set:
    """Every stage the stage ``key`` waits for, directly or through others."""
    found, todo = set(), list(plan.stages[key].needs)
    while todo:
        need = todo.pop()
        if need not in found:
            found.add(need)
            todo.extend(plan.stages[need].needs)
    return found


def test_each_sides_best_is_chosen_on_validation_over_its_models_and_healings_on_the_common_seeds():
    from utils.study_report import best_by_side

    def row(model: str, side: str, healing: str, seed: int, top1: float, evaluation: str = "validation") -> dict:
        return {"study": "s", "model": model, "side": side, "healing": healing, "seed": seed, "budget": "0.5",
                "evaluation": evaluation, "top1": top1}  # fmt: skip

    rows = [row("a_50", "sitra", "kl", 42, 0.30), row("b_50", "sitra", "kl", 42, 0.31),
            row("b_50", "sitra", "layerwise", 42, 0.32), row("f_50", "field", "kl", 42, 0.9),
            row("g_50", "field", "layerwise", 42, 0.95), row("a_50", "sitra", "kl", 42, 0.99, "test")]  # fmt: skip
    best = best_by_side(rows, 0.5)  # the test split's 0.99 is not looked at; each side over both healings
    assert best == {"sitra": (("s", "b_50", "layerwise"), 3), "field": (("s", "g_50", "layerwise"), 2)}
    assert best_by_side(rows, 0.25) == {}
    # a_50 evaluated under a second, luckier seed too: chosen on the seed every model has, it stays behind b_50
    rows.append(row("a_50", "sitra", "kl", 43, 0.90))
    assert best_by_side(rows, 0.5)["sitra"][0][1] == "b_50"
    rows += [row(model, side, healing, 43, 0.2) for model, side, healing in
             (("b_50", "sitra", "kl"), ("b_50", "sitra", "layerwise"), ("f_50", "field", "kl"),
              ("g_50", "field", "layerwise"))]  # fmt: skip
    assert best_by_side(rows, 0.5)["sitra"][0][1] == "a_50"  # over both seeds now: (0.30 + 0.90) / 2
    with pytest.raises(UserError, match="budget 0.5: no seed that every model at it was evaluated under"):
        best_by_side([row("a_50", "sitra", "kl", 42, 0.3), row("f_50", "field", "kl", 43, 0.3)], 0.5)
    # a comparison row names its two healed models whichever way they were healed
    from utils.study_report import healed_names, healings_of

    assert healed_names({"first": "b_50", "second": "g_50", "healing": healings_of("layerwise", "kl")}) == (
        "b_50_layerwise", "g_50_kl")  # fmt: skip
    assert healed_names({"first": "a", "second": "a", "healing": "layerwise - kl"}) == ("a_layerwise", "a_kl")
    assert healed_names({"first": "a", "second": "b", "healing": healings_of("kl", "kl")}) == ("a_kl", "b_kl")


def test_holm_adjusts_each_p_value_by_its_rank_and_widens_its_interval():
    from utils.statistics import holm

    corrected = holm([0.01, 0.04, 0.03, 0.005])
    assert [round(c["holm_p"], 4) for c in corrected] == [0.03, 0.06, 0.06, 0.02]
    assert [c["holm_survives"] for c in corrected] == [True, False, False, True]
    # the two that fail take the first failing step's level (1 - 0.05 / 2), so 0.04's interval holds 0 (at its
    # own step's 95% it would not, though it fails)
    assert [round(c["holm_confidence"], 4) for c in corrected] == [0.9833, 0.975, 0.975, 0.9875]
    assert [round(c["holm_confidence"], 4) for c in holm([0.026, 0.026])] == [0.975, 0.975]  # ties: one level


def test_a_computed_zero_is_a_value_in_the_tables_not_a_missing_cell():
    """In-memory rows carry numbers: a difference of exactly 0 (a model against itself) and a Holm p of 0 (a
    difference without spread) are shown, not taken for absent."""
    from utils.study_report import comparisons_markdown

    def row(first: str, difference: float, p: float) -> dict:
        values = {
            f"{metric}_{end}": difference for metric in ("top1", "agree_top1") for end in ("difference", "low", "high")
        }
        return {"kind": "declared", "budget": 0.5, "healing": "kl", "first": first, "second": "b", "seeds": 1,
                **values, "holm_low": difference, "holm_high": difference, "holm_p": p, "holm_survives": p < 0.05,
                "top1_seed_spread": 0.0}  # fmt: skip

    table = comparisons_markdown([row("same", 0.0, 1.0), row("constant", 0.01, 0.0)]).splitlines()
    assert table[0].startswith("2 comparisons")
    assert table[4].count("+0.00 [+0.00, +0.00]") == 3 and "| 0.00 |" in table[4]  # difference, Holm, agreement
    assert table[5].count("+1.00 [+1.00, +1.00]") == 3 and "**0**" in table[5]


def test_two_parts_running_one_recipe_under_other_seeds_keep_their_own_seed_cells():
    from utils.study_report import ALL_SEEDS, seeds_markdown

    def row(study: str, seed: str, difference: float) -> dict:
        values = {f"top1_{end}": difference for end in ("difference", "low", "high")}
        pooled = {"holm_p": 0.5, "holm_survives": False, "top1_seed_spread": 0.01} if seed == ALL_SEEDS else {}
        return {"kind": "declared", "budget": 0.5, "healing": "kl", "study": study, "first_study": study,
                "first": "a", "second": "b", "seed": seed, **values, **pooled}  # fmt: skip

    rows = [row("p1", "42", 0.01), row("p1", "43", 0.02), row("p1", ALL_SEEDS, 0.015),
            row("p2", "44", 0.03), row("p2", "45", 0.04), row("p2", ALL_SEEDS, 0.035)]  # fmt: skip
    first, second = seeds_markdown(rows).splitlines()[2:]
    assert first.count("+1.00 [") == 1 and first.count("+2.00 [") == 1 and "+3.00 [" not in first
    assert second.count("+3.00 [") == 1 and second.count("+4.00 [") == 1 and "+1.00 [" not in second


def test_holm_counts_a_test_reported_under_several_kinds_once_and_computes_its_interval_once():
    from utils.statistics import holm
    from utils.study_report import holm_by_test

    rows = [{"kind": kind, "top1_p_value": p} for kind, p in (("declared", 0.01), ("best", 0.01), ("declared", 0.04))]
    asked = []

    def interval_at(row: dict, confidence: float) -> tuple[float, float]:
        asked.append((row["kind"], row["top1_p_value"], round(confidence, 4)))
        return -confidence, confidence

    holm_by_test(rows, ["pair a", "pair a", "pair b"], interval_at)
    assert asked == [("declared", 0.01, 0.975), ("declared", 0.04, 0.95)]  # two tests, not three rows
    expected = holm([0.01, 0.04])
    assert [row["holm_p"] for row in rows] == [expected[0]["holm_p"]] * 2 + [expected[1]["holm_p"]]
    assert [row["holm_tests"] for row in rows] == [2, 2, 2]
    assert rows[0]["holm_high"] == rows[1]["holm_high"] == pytest.approx(0.975) and rows[2]["holm_low"] == -0.95


def test_a_saved_plan_gives_the_workflow_the_same_stages(tmp_path, tiny_teacher_dir):
    """What a job on a cluster node reads instead of planning again."""
    plan = Plan(Study.load(tiny_study(tmp_path, tiny_teacher_dir, resources={"heal": {"gpu": 1}})), tmp_path, "py")
    plan.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded.stages == plan.stages and loaded.report == plan.report and loaded.root == plan.root
    key = next(key for key in plan.stages if key[0] == "heal")
    assert loaded.shell_command(*key) == plan.shell_command(*key) and loaded.inputs(*key) == plan.inputs(*key)
    assert loaded.resources("heal") == {"gpu": 1} and loaded.inputs("report") == plan.inputs("report")


def test_the_frontier_plots_every_healed_model_against_the_teachers_top1(tmp_path):
    from utils.study_report import plot_study_frontier, study_frontier_figure

    def row(model, family, side, healing, top1, share, seed=42):
        return {"seed": seed, "evaluation": "test", "model": model, "family": family, "side": side,
                "healing": healing, "top1": top1, "flops_share": share, "budget": share}  # fmt: skip

    rows = [row("teacher", "teacher", "teacher", "", 0.3, 1.0), row("a_50", "a", "sitra", "kl", 0.28, 0.5),
            row("a_50", "a", "sitra", "layerwise", 0.29, 0.5), row("f_50", "f", "field", "kl", 0.27, 0.5)]  # fmt: skip
    assert plot_study_frontier(rows, tmp_path / "frontier.png").stat().st_size > 10_000
    # one budget's part spans a few points of the teacher's top-1: no two ticks may read the same
    narrow = [rows[0], row("a_67", "a", "sitra", "kl", 0.2985, 0.664), row("f_67", "f", "field", "kl", 0.2920, 0.664)]
    figure = study_frontier_figure(narrow)
    figure.canvas.draw()
    for ticks in (figure.axes[0].get_yticklabels(), figure.axes[0].get_xticklabels()):
        labels = [tick.get_text() for tick in ticks if tick.get_text()]
        assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    rows[0]["top1"] = 0.0  # no share of a teacher that predicts nothing
    assert plot_study_frontier(rows, tmp_path / "none.png") is None


def test_the_students_table_reports_the_epoch_each_student_keeps():
    """The models are built from each student's best epoch: the table's loss and top-1 are that epoch's."""
    from utils.study_report import students_markdown

    losses = [3.0, 1.0, 0.5, 0.6]
    rows = [
        {"student": "feed-forward 768", "block": "0", "seed": "seed42", "epoch": str(epoch), "validation_loss": loss,
         "replaced_top1": 0.3 + 0.01 * epoch, "train_seconds": 60, "stopped_early": str(epoch == 3),
         "kept": str(epoch == 2)}
        for epoch, loss in enumerate(losses)
    ]  # fmt: skip
    line = students_markdown(rows).splitlines()[-1]
    assert line == "| feed-forward 768 | 0 | seed42 | 3 | the rule | 2 | 1 → 0.5 | 50.0% | 31.00 → 32.00 | 3.0 |"


def test_the_students_plot_leaves_out_a_student_without_a_second_epoch(tmp_path):
    """A stage that has only evaluated its students before training (epoch 0), or trained them one epoch, has no
    curve relative to epoch 1: no empty or one-point panel."""
    from utils.study_report import plot_student_curves

    started = {"student": "feed-forward 384", "block": "0", "seed": "seed42", "epoch": "0", "validation_loss": 1.0,
               "stopped_early": "False", "kept": "True"}  # fmt: skip
    one_epoch = {**started, "student": "feed-forward 768", "epoch": "1"}
    assert plot_student_curves([started, one_epoch], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    trained = [
        {**started, "student": "attention 6x32", "epoch": str(epoch), "kept": str(epoch == 1)} for epoch in (1, 2)
    ]
    assert plot_student_curves([started, one_epoch, *trained], tmp_path / "one.png").exists()


def test_the_students_plot_gives_a_block_one_colour_in_every_panel_and_a_seed_one_line_style():
    """Twelve blocks (bert-base's) of two students under two seeds: 48 curves, twelve colours, each block's the
    same in both panels, a line style per seed; the legend names the blocks in order, then the seeds."""
    from utils.study_report import student_curves_figure

    rows = [{"student": student, "block": str(block), "seed": seed, "epoch": str(epoch), "kept": str(epoch == 2),
             "validation_loss": 1 / epoch + block / 100, "stopped_early": "True"}
            for student in ("attention 6x32", "feed-forward 768") for block in range(12)
            for seed in ("42", "43") for epoch in (1, 2)]  # fmt: skip
    figure = student_curves_figure(rows)
    curves = [[line for line in axes.get_lines() if len(line.get_xdata()) > 1] for axes in figure.axes]
    assert [len(found) for found in curves] == [24, 24]
    colours = [[tuple(line.get_color()) for line in found] for found in curves]
    assert colours[0] == colours[1] and len(set(colours[0])) == 12  # sorted by seed, then block
    assert [line.get_linestyle() for line in curves[0]] == ["-"] * 12 + ["--"] * 12
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels == [f"block {block}" for block in range(12)] + ["seed 42", "seed 43"]


def test_the_compute_plot_puts_each_healed_model_at_its_training_flops(tmp_path):
    from utils.study_report import plot_study_compute

    def row(model, side, budget, flops, top1, seed=42):
        return {"evaluation": "validation", "model": model, "side": side, "budget": budget, "healing": "kl",
                "train_flops": flops, "top1": top1, "seed": seed}  # fmt: skip

    teacher = {"evaluation": "validation", "model": "teacher", "top1": "0.35", "seed": 42, "healing": ""}
    models = [teacher, row("sitra_50", "sitra", "0.5", "4e15", "0.34"), row("field_50", "field", "0.5", "1e15", "0.33"),
              row("sitra_25", "sitra", "0.25", "3e15", "0.32"),
              row("field_25", "field", "0.25", "1e15", "0.30")]  # fmt: skip
    path = plot_study_compute(models, tmp_path / "compute.png")
    assert path is not None and path.stat().st_size > 10_000
    uncounted = [{**model, "train_flops": ""} for model in models]  # runs made before FLOPs were counted
    assert plot_study_compute(uncounted, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_a_variant_is_healed_apart_from_the_builds_it_shares_and_builds_apart_what_it_changes(
    tmp_path, tiny_teacher_dir, tiny_data_dir
):
    """``longer`` heals the study's own sitra models longer: no store, student or model of its own, its heal reading
    the study's models in seed42/ and writing its own, named @longer, under longer/seed42/; ``bf16`` trains in bf16:
    its store, students and models apart, under bf16/seed43/. One (seed folder, name) is one stage, and every healed
    model's name is distinct across the variants."""
    data = {"train_sentences": 96, "heal_sentences": 64, "seq_len": 20}
    variants = {"longer": {"data": {"heal_epochs": 2}, "families": ["sitra"], "seeds": [42]},
                "bf16": {"data": {"precision": "bf16"}, "budgets": [0.5], "seeds": [43]}}  # fmt: skip
    study = tiny_study(tmp_path, tiny_teacher_dir, data=data, variants=variants, seeds=[42, 43],
                       comparisons=[["sitra", "field"], ["sitra@longer", "sitra"]])  # fmt: skip
    (tmp_path / "plain").mkdir()
    plain = Plan(Study.load(tiny_study(tmp_path / "plain", tiny_teacher_dir, data=data, seeds=[42, 43])), tmp_path,
                 "python")  # fmt: skip
    plan = Plan(Study.load(study), tmp_path, "python")
    assert sorted(model.name for model in plan.models) == sorted([*(model.name for model in plain.models),
                                                                  "sitra_50@longer", "sitra_25@longer",
                                                                  "sitra_50@bf16", "field_50@bf16"])  # fmt: skip
    added = set(plan.stages) - set(plain.stages)
    assert sorted(key for key in added if key[1] == "seed42") == []  # longer builds nothing: it heals the study's
    assert {key[0] for key in added if key[1] == "longer/seed42"} == {"heal", "evaluate"}
    assert {key[0] for key in added if key[1] == "bf16/seed43"} >= {"store", "attention_students", "model", "heal"}
    heal = plan.stage("heal", "longer/seed42", "kl").command
    given = heal[heal.index("--model") + 1 : heal.index("--max_sentences")]
    assert given == tuple(str(tmp_path / "seed42" / "models" / name) for name in ("sitra_50", "sitra_25"))
    assert heal[heal.index("--output_model") + 1 :] == tuple(
        str(tmp_path / "longer" / "seed42" / "models" / name) for name in ("sitra_50_kl@longer", "sitra_25_kl@longer")
    )
    assert heal[heal.index("--epochs") + 1] == "2" and "--storage_directory" in heal
    assert heal[heal.index("--storage_directory") + 1] == str(tmp_path / "longer" / "seed42")
    trained = [stage for stage in plan.stages.values() if stage.seed == "bf16/seed43"
               and stage.kind in ("attention_students", "ffn_students", "heal")]  # fmt: skip
    assert len(trained) == 3 and all("--precision bf16" in " ".join(stage.command) for stage in trained)
    assert not [s for s in plan.stages.values() if s.seed.startswith("seed") and "bf16" in " ".join(s.command)]
    healed = [(stage.seed.split("/")[-1], name) for stage in plan.stages.values() if stage.kind == "heal"
              for name in stage.command[stage.command.index("--output_model") + 1 :]]  # fmt: skip
    assert len({(seed, Path(name).name) for seed, name in healed}) == len(healed) == 2 * 4 + 2 + 2
    # the workflow's rules take a variant's seed folder as their seed: its stages are targets like the study's own
    dry = snakemake(tmp_path, study, tmp_path / "root", tiny_data_dir, "-n", str(tmp_path / "root" / "stages"
                    / "longer" / "seed42" / "evaluate" / "validation.done"))  # fmt: skip
    assert dry.returncode == 0, dry.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+) +(\d+)$", dry.stdout + dry.stderr, re.MULTILINE))
    assert counts["heal"] == "1" and counts["evaluate"] == "1" and counts["model"] == "2", counts


def test_a_variants_models_are_reported_under_their_names_and_compared_with_the_studys(
    tiny_study_run, tiny_teacher_dir, tmp_path
):
    """The tiny study's evaluations, copied as the ``longer`` variant's too (its models renamed @longer, sitra_50 one
    sentence in four better): models.csv has each variant's models once, the teacher once per seed and split, and
    the declared comparison of sitra@longer with sitra is the difference of the two."""
    variants = {"longer": {"data": {"heal_epochs": 2}, "families": ["sitra"]}}
    study = tiny_study(tmp_path, tiny_teacher_dir, variants=variants,
                       comparisons=[["sitra", "field"], ["sitra@longer", "sitra"]])  # fmt: skip
    root = tmp_path / "root"
    shutil.copytree(tiny_study_run[2] / "seed42" / "results", root / "seed42" / "results")
    for split in ("validation", "test"):
        folder = root / "longer" / "seed42" / "results" / split
        folder.mkdir(parents=True)
        metrics = json.loads((root / "seed42" / "results" / split / "metrics.json").read_text())
        metrics["models"] = {name.replace("_kl", "_kl@longer"): values for name, values in metrics["models"].items()
                             if not name.startswith("field")}  # fmt: skip
        (folder / "metrics.json").write_text(json.dumps(metrics))
        with np.load(root / "seed42" / "results" / split / PER_SENTENCE) as loaded:
            arrays = {key.replace("_kl/", "_kl@longer/"): value for key, value in loaded.items()
                      if not key.startswith("field")}  # fmt: skip
        better = arrays["sitra_50_kl@longer/top1"]
        arrays["sitra_50_kl@longer/top1"] = np.where(np.arange(len(better)) % 4 == 0, 1.0, better)
        np.savez(folder / PER_SENTENCE, **arrays)
    plan = Plan(Study.load(study), root, sys.executable)
    write_study_data(plan)
    with open(plan.data_files["models"]) as file:
        models = list(csv.DictReader(file))
    named = {(row["model"], row["evaluation"]): row for row in models}
    assert len(named) == len(models) == 2 * 7  # teacher, 4 of the study's, 2 of longer's, on each split
    assert named["sitra_50@longer", "test"]["variant"] == "longer" and named["sitra_50", "test"]["variant"] == ""
    with open(plan.data_files["comparisons"]) as file:
        longer = [row for row in csv.DictReader(file) if row["first"] == "sitra_50@longer"]
    with np.load(root / "seed42" / "results" / "test" / PER_SENTENCE) as loaded:
        own = loaded["sitra_50_kl/top1"]
    gain = np.where(np.arange(len(own)) % 4 == 0, 1.0, own).mean() - own.mean()
    assert [row["second"] for row in longer] == ["sitra_50"] and gain > 0
    assert float(longer[0]["top1_difference"]) == pytest.approx(gain)


def test_only_the_declared_comparisons_are_the_holm_family_and_the_rest_say_they_are_exploratory(
    tiny_study_run, tiny_teacher_dir, tmp_path
):
    """The tiny study's evaluations under a study file that declares its pair but not ``best``: each side's best is
    still compared (so a reader sees it), its p uncorrected and marked exploratory, and the Holm family is the two
    declared tests alone; its pages print each declared comparison with one adjusted p."""
    shutil.copytree(tiny_study_run[2] / "seed42" / "results", tmp_path / "root" / "seed42" / "results")
    study = tiny_study(tmp_path, tiny_teacher_dir, comparisons=[["sitra", "field"]])
    assert not Study.load(study).compares_best and Study.load(tiny_study_run[1]).compares_best
    plan = Plan(Study.load(study), tmp_path / "root", sys.executable)
    write_study_data(plan)
    with open(plan.data_files["comparisons"]) as file:
        rows = list(csv.DictReader(file))
    declared = [row for row in rows if row["kind"] == "declared"]
    best = [row for row in rows if row["kind"] == "best"]
    assert len(declared) == len(best) == 2
    assert all(row["holm_tests"] == "2" and row["holm_p"] and not row["exploratory"] for row in declared)
    assert all(row["exploratory"] == "True" and not row["holm_p"] and row["top1_p_value"] for row in best)
    page = (tmp_path / "root" / "report" / "study.md").read_text()
    assert "2 comparisons, Holm-corrected together" in page and "2 exploratory (not declared" in page
    assert page.count("exploratory: ") >= 2  # the headline's best rows and the comparisons table's say so
    # a declared comparison not run yet (a variant's pair at both budgets) is in the family, with p 1: the others'
    # correction is what it will be once it has run
    later = tiny_study(tmp_path, tiny_teacher_dir, comparisons=[["sitra", "field"], ["sitra@later", "field@later"]],
                       variants={"later": {"data": {"heal_epochs": 2}}})  # fmt: skip
    write_study_data(Plan(Study.load(later), tmp_path / "root", sys.executable))
    with open(plan.data_files["comparisons"]) as file:
        declared = [row for row in csv.DictReader(file) if row["kind"] == "declared"]
    assert [row["first"] for row in declared] == ["sitra_50", "sitra_25"]
    assert all(row["holm_tests"] == "4" for row in declared)


def test_a_goal_is_met_only_where_the_lower_bound_of_its_share_reaches_it():
    """Round three's 50% row: 98.2% [96.9%, 99.5%] of the teacher's top-1 against a goal of 97% is not a goal met."""
    from utils.study_report import goal_verdict

    assert goal_verdict(0.97, 0.982, 0.969) == "97%: not met (lower bound 96.9%; point estimate above it)"
    assert goal_verdict(0.92, 0.935, 0.921) == "92%: met (lower bound 92.1%)"
    assert goal_verdict(0.95, 0.94, 0.93) == "95%: not met (lower bound 93.0%)"
    assert goal_verdict(0.95, 0.96, None) == "95%: met (point estimate)" and goal_verdict(None, 0.9, 0.8) == "none set"
