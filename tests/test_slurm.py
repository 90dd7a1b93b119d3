""".train against a real one-node SLURM (munged, slurmctld, slurmd started here from a temporary config).

Installs Debian's slurm-wlm and munge when they are missing (needs root, as in CI); stops every daemon
it started.
"""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from filelock import FileLock

from conftest import REPO
from utils.storage import Storage

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged"]


def free_ports(count: int) -> list[int]:
    """Distinct free ports (all probes stay bound until every port is chosen, so none is picked twice)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


INSTALL_LOCK = "/tmp/sitra-test-slurm-install.lock"  # one path for every test session on this machine


def ensure_slurm_installed() -> None:
    if all(shutil.which(binary) for binary in BINARIES):
        return
    if os.geteuid() != 0:
        pytest.skip("slurm-wlm/munge are not installed and installing them needs root")
    # two suites starting at once would race on apt's lock: the second waits here, then finds slurm installed
    with FileLock(INSTALL_LOCK, timeout=1800):
        if all(shutil.which(binary) for binary in BINARIES):
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        wait_for_apt = ["-o", "DPkg::Lock::Timeout=600"]  # and for any other apt client on the machine
        subprocess.run(
            ["apt-get", *wait_for_apt, "update", "-qq"], env=env, check=True, capture_output=True, timeout=900
        )
        subprocess.run(
            ["apt-get", *wait_for_apt, "install", "-y", "-qq", *PACKAGES],
            env=env,
            check=True,
            capture_output=True,
            timeout=1200,
        )


@pytest.fixture
def slurm(tmp_path):
    """A running one-node cluster; yields the environment that points the SLURM clients at it."""
    ensure_slurm_installed()
    root = tmp_path / "slurm"
    (root / "state").mkdir(parents=True)
    (root / "spool").mkdir()
    munge_dir = root / "munge"
    munge_dir.mkdir(mode=0o700)
    (munge_dir / "munge.key").write_bytes(os.urandom(1024))
    (munge_dir / "munge.key").chmod(0o600)
    socket_path = munge_dir / "munge.sock"
    host = socket.gethostname().split(".")[0]
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    config = root / "slurm.conf"
    controller_port, node_port = free_ports(2)
    config.write_text(f"""ClusterName=sitra-test
SlurmctldHost={host}
SlurmctldPort={controller_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket_path}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(config)}
    munged = [
        "munged",
        "--force",
        "-S",
        str(socket_path),
        f"--key-file={munge_dir}/munge.key",
        f"--log-file={munge_dir}/munged.log",
        f"--pid-file={munge_dir}/munged.pid",
        f"--seed-file={munge_dir}/seed",
    ]
    subprocess.run(munged, check=True, capture_output=True, timeout=60)
    try:
        subprocess.run(["slurmctld", "-f", str(config)], env=env, check=True, timeout=60)
        subprocess.run(["slurmd", "-f", str(config)], env=env, check=True, timeout=60)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the SLURM node did not come up: {(root / 'slurmctld.log').read_text()[-2000:]}")
        yield env
    finally:
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True, timeout=60)
        time.sleep(1)
        for pid_file in (root / "slurmctld.pid", root / "slurmd.pid"):
            if pid_file.exists():
                subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True)
        subprocess.run(["munged", "-S", str(socket_path), "--stop"], capture_output=True, timeout=60)


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
    deadline = time.time() + 600
    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout.strip()
        if not queue:
            break
        time.sleep(1)
    else:
        pytest.fail(f"job {job} still queued: {queue}")
    logs = sorted((storage / "slurm").glob(f"sitra-blocks-{job}_*.log"))
    assert len(logs) == 2
    for task, log in enumerate(logs):
        text = log.read_text()
        assert f"task {task} of job {job}" in text and "exit 0" in text, text[-3000:]
        run = Storage(storage).block_run("block", task, heads=2, d_k=8)
        assert (run / "latest.pt").exists() and len((run / "metrics.jsonl").read_text().splitlines()) == 2


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
