""".train against a real one-node SLURM (munged, slurmctld, slurmd started from a temporary config by
tests/slurm_cluster.py, which installs Debian's slurm-wlm and munge when they are missing and stops every daemon
it started), and accounting (sacct) on the same kind of cluster with slurmdbd.
"""

import os
import subprocess
import sys
import time

import pytest
from slurm_cluster import start_cluster

from conftest import REPO
from utils.storage import Storage


@pytest.fixture
def slurm(tmp_path):
    """A running one-node cluster without accounting; yields the environment that points the SLURM clients at it."""
    with start_cluster(tmp_path / "slurm", accounting=False) as env:
        yield env


def wait_until_left_queue(env: dict, job: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout.strip()
        if not queue:
            return
        time.sleep(0.25)
    pytest.fail(f"job {job} still queued: {queue}")


def test_train_sweep_runs_as_a_job_array(slurm, tiny_teacher_dir, tiny_data_dir, tmp_path):
    storage = tmp_path / "storage"
    env = {
        **slurm,
        "SITRA_STORAGE": str(storage),
        "SITRA_TEACHER": tiny_teacher_dir,
        "SITRA_PYTHON": sys.executable,
        "SITRA_GPUS": "0",
        "SITRA_CPUS": "1",
        "SITRA_MEM": "2G",
        "SITRA_TIME": "00:15:00",
        "SITRA_BLOCKS": "0 1",
        "SITRA_DKS": "8",
        "SITRA_HEADS": "2",
        "SITRA_EPOCHS": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "SITRA_EXTRA": f"--data_dir {tiny_data_dir} --max_sentences 96 --batch_size 16 --eval_sentences 32",
    }
    dry = subprocess.run(
        ["./.train", "--dry-run", "blocks"], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert "would submit 2 tasks" in dry.stdout and "--block 1 --block_d_k 8 --block_heads 2" in dry.stdout
    assert not storage.exists()  # a dry run writes nothing

    submitted = subprocess.run(["./.train", "blocks"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    wait_until_left_queue(env, job, 600)
    logs = sorted((storage / "slurm").glob(f"sitra-blocks-{job}_*.log"))
    assert len(logs) == 2
    for task, log in enumerate(logs):
        text = log.read_text()
        assert f"task {task} of job {job}" in text and "exit 0" in text, text[-3000:]
        run = Storage(storage).block_run("block", task, heads=2, d_k=8)
        assert (run / "latest.pt").exists() and len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_accounting_records_a_finished_job(slurm_accounting, tmp_path):
    """sacct (which Snakemake's SLURM executor polls) knows a job that ran, under the user's default account; a step
    started without SLURM_CONF (as Snakemake's jobstep executor starts its srun) still finds the cluster."""
    env = slurm_accounting
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--wrap", "env -u SLURM_CONF srun -n1 true", "-o", str(tmp_path / "job.log")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    wait_until_left_queue(env, job, 120)
    deadline = time.time() + 30
    while time.time() < deadline:  # slurmctld hands the end of the job to slurmdbd a moment later
        sacct = ["sacct", "-j", job, "-n", "-X", "-P", "-o", "State,Account,Cluster"]
        record = subprocess.run(sacct, env=env, capture_output=True, text=True, timeout=60).stdout.strip()
        if record.startswith("COMPLETED"):
            break
        time.sleep(0.25)
    assert record == "COMPLETED|sitra|sitra-test", (tmp_path / "job.log").read_text()
    accounts = ["sacctmgr", "-nP", "show", "user", "root", "withassoc", "format=account"]
    assert "sitra" in subprocess.run(accounts, env=env, capture_output=True, text=True, timeout=60).stdout.split()


def test_store_sweep_waits_for_one_store_build(tmp_path):
    env = {**os.environ, "SITRA_STORE": "1", "SITRA_BLOCKS": "0 1", "SITRA_DKS": "8", "SITRA_HEADS": "2",
           "SITRA_STORAGE": str(tmp_path)}  # fmt: skip
    dry = subprocess.run(
        ["./.train", "--dry-run", "blocks"], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    store, sweep = dry.stdout.split("would submit")[1:]
    assert "build_teacher_store.py" in store and "1 tasks" in store
    assert "--dependency afterok:STORE_JOB" in sweep and sweep.count("--teacher_store") == 2


def test_variants_repeat_the_grid_once_per_flag_set(tmp_path):
    """SITRA_VARIANTS: a criteria sweep is one submission into one storage directory, one task per variant."""
    env = {**os.environ, "SITRA_BLOCKS": "0 1", "SITRA_DKS": "8", "SITRA_HEADS": "2", "SITRA_STORAGE": str(tmp_path),
           "SITRA_VARIANTS": "; --criterion L1; --criterion CrossEntropy --loss_on_logits"}  # fmt: skip
    dry = subprocess.run(
        ["./.train", "--dry-run", "blocks"], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout
    tasks = [line for line in dry.splitlines() if line.strip().startswith("task ")]
    assert "would submit 6 tasks" in dry and len(tasks) == 6
    assert (
        sum("--criterion" not in task for task in tasks) == 2 and sum("--criterion L1" in task for task in tasks) == 2
    )
    assert sum("--criterion CrossEntropy --loss_on_logits" in task for task in tasks) == 2


def test_the_ffn_sweep_trains_every_block_at_every_width(tmp_path):
    env = {**os.environ, "SITRA_BLOCKS": "0 1", "SITRA_FFN_WIDTHS": "128 256", "SITRA_STORAGE": str(tmp_path)}
    dry = subprocess.run(
        ["./.train", "--dry-run", "ffn"], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    tasks = [line for line in dry.stdout.splitlines() if line.strip().startswith("task ")]
    assert len(tasks) == 4 and all("--part ffn" in task for task in tasks)
    assert any("--block 1 --ffn_width 256" in task for task in tasks)
