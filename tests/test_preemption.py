"""SIGTERM to a running CLI run: it checkpoints its place in the epoch and exits 75; the rerun continues
from that step and ends with the weights of an uninterrupted run."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import retrain_single_block
from conftest import REPO, storage_of
from utils import checkpoint as checkpoint_module
from utils.checkpoint import RunDirectory
from utils.objectives import AttentionDistillation
from utils.preemption import EXIT_REQUEUE

BLOCK = ["--block", "1", "--block_heads", "2", "--block_d_k", "8", "--batch_size", "2", "--epochs", "20"]


def test_sigterm_checkpoints_mid_epoch_and_resumes(run_flags, tmp_path):
    flags = run_flags(storage=tmp_path / "preempted", drop=["batch_size"])
    run_dir = storage_of(flags).block_run("block", 1, heads=2, d_k=8)
    process = subprocess.Popen(
        [sys.executable, "retrain_single_block.py", *flags, *BLOCK],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not (run_dir / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # into training
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == EXIT_REQUEUE, stderr[-2000:]
    assert "received SIGTERM: stopping after this step" in stderr
    state = torch.load(run_dir / "latest.pt", weights_only=True)
    stopped_at = state["step"]
    assert 0 < stopped_at < 20 * 48
    assert state["batches_done"] > 0 or "preempted at epoch" not in stderr  # mid-epoch unless at an epoch boundary

    resumed = retrain_single_block.main(flags + BLOCK)
    straight_flags = run_flags(storage=tmp_path / "straight", drop=["batch_size"])
    straight = retrain_single_block.main(straight_flags + BLOCK)
    assert [r["epoch"] for r in resumed] == [r["epoch"] for r in straight] == list(range(21))
    final = {
        name: torch.load(storage_of(f).block_checkpoint("block", 1, heads=2, d_k=8), weights_only=True)
        for name, f in (("preempted", flags), ("straight", straight_flags))
    }
    assert final["preempted"]["step"] == final["straight"]["step"] == 20 * 48
    for name, tensor in final["straight"]["model"].items():
        assert (final["preempted"]["model"][name] - tensor).abs().max() <= 1e-6, name
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 20


def _slurm_task(command: str, tmp_path: Path, hostname: str = "") -> subprocess.Popen:
    """slurm/task.sh running ``command`` as task 0 of job 4242, ``scontrol`` (and ``hostname`` where given: a
    script) faked in a ``bin`` folder first on the PATH; scontrol's calls go to ``scontrol.calls``."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fakes = {"scontrol": f'echo "$@" >> {tmp_path / "scontrol.calls"}', "hostname": hostname}
    for name, script in fakes.items():
        if script:
            (fake_bin / name).write_text(f"#!/bin/sh\n{script}\n")
            (fake_bin / name).chmod(0o755)
    tasks = tmp_path / "tasks"
    tasks.write_text(command + "\n")
    env = {**os.environ, "SITRA_REPO": str(REPO), "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "4242",
           "PATH": f"{fake_bin}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    return subprocess.Popen(["bash", "slurm/task.sh", str(tasks)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


def _children(pid: int) -> list[str]:
    """The command lines of a process's children (none yet: [])."""
    lines = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(FileNotFoundError):
            lines.append(Path(f"/proc/{child}/cmdline").read_text().replace("\0", " "))
    return lines


def test_sigusr1_in_the_first_second_requeues_the_slurm_task(run_flags, tmp_path):
    script = f"{sys.executable} retrain_single_block.py"
    task = _slurm_task(" ".join([script, *run_flags(), *BLOCK[:6], "--epochs", "1"]), tmp_path)
    deadline = time.time() + 60
    while not any(line.startswith(script) for line in _children(task.pid)) and time.time() < deadline:
        time.sleep(0.01)  # signalled once Python runs the script (its first second), not at the fork before it
    task.send_signal(signal.SIGUSR1)
    output, _ = task.communicate(timeout=120)
    assert task.returncode == EXIT_REQUEUE, output
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "4242_0"]
    assert "requeueing" in output


def test_sigusr1_before_the_command_starts_requeues_without_starting_it(run_flags, tmp_path):
    """The signal comes while the task is still starting (its fake ``hostname`` waits): the task is requeued and
    its command never runs (its storage folder is never made)."""
    marker, storage = tmp_path / "starting", tmp_path / "storage"
    command = " ".join([sys.executable, "retrain_single_block.py", *run_flags(storage=storage), *BLOCK[:6]])
    task = _slurm_task(command, tmp_path, hostname=f"touch {marker}; sleep 1; echo node")
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.01)
    task.send_signal(signal.SIGUSR1)
    output, _ = task.communicate(timeout=60)
    assert task.returncode == EXIT_REQUEUE, output
    assert "SIGUSR1 before the command started: not started" in output and "on node:" in output
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "4242_0"]
    assert not storage.exists()


class SignalAt:
    """Wraps a method so that its ``n``-th call sends ``signum`` to this process first."""

    def __init__(self, method, n: int, signum: int):
        self.method, self.n, self.signum, self.calls = method, n, signum, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), self.signum)
        return self.method(*args, **kwargs)


def test_signal_during_epoch_0_evaluation_checkpoints_then_exits_75(run_flags, monkeypatch):
    evaluate = SignalAt(AttentionDistillation.evaluate, 1, signal.SIGUSR1)
    monkeypatch.setattr(AttentionDistillation, "evaluate", lambda self, loader: evaluate(self, loader))
    with pytest.raises(SystemExit) as exit_info:
        retrain_single_block.main(run_flags() + BLOCK[:6] + ["--epochs", "1"])
    assert exit_info.value.code == EXIT_REQUEUE
    run = storage_of(run_flags()).block_run("block", 1, heads=2, d_k=8)
    assert torch.load(run / "latest.pt", weights_only=True)["step"] == 0  # the first checkpoint is complete
    monkeypatch.undo()
    assert [r["epoch"] for r in retrain_single_block.main(run_flags() + BLOCK[:6] + ["--epochs", "1"])] == [0, 1]


def test_ctrl_c_mid_epoch_keeps_the_whole_epochs_metrics(run_flags, tmp_path, monkeypatch, capsys):
    flags = BLOCK[:6] + ["--epochs", "1", "--block_dropout", "0"]
    straight = retrain_single_block.main(run_flags(storage=tmp_path / "straight") + flags)
    loss = SignalAt(AttentionDistillation.loss, 3, signal.SIGINT)
    monkeypatch.setattr(AttentionDistillation, "loss", lambda self, batch, network: loss(self, batch, network))
    interrupted = run_flags(storage=tmp_path / "interrupted")
    with pytest.raises(SystemExit) as exit_info:
        retrain_single_block.main(interrupted + flags)
    assert exit_info.value.code == EXIT_REQUEUE and "Traceback" not in capsys.readouterr().err
    state = torch.load(storage_of(interrupted).block_checkpoint("block", 1, 2, 8), weights_only=True)
    assert state["batches_done"] == 3 and state["epoch_progress"]["batches"] == 3
    monkeypatch.undo()
    resumed = retrain_single_block.main(interrupted + flags)
    assert [r["epoch"] for r in resumed] == [0, 1]
    assert resumed[1]["train_loss"] == pytest.approx(straight[1]["train_loss"], rel=1e-6)  # all 6 batches, not 3
    assert resumed[1]["sentences_per_second"] * resumed[1]["train_seconds"] == pytest.approx(96)


def test_metrics_and_checkpoint_agree_whatever_dies_when(run_flags, monkeypatch):
    run = storage_of(run_flags()).block_run("block", 1, heads=2, d_k=8)
    log_metrics = RunDirectory.log_metrics

    def killed_after_the_first_checkpoint(self, record):
        raise SystemExit("killed")

    monkeypatch.setattr(RunDirectory, "log_metrics", killed_after_the_first_checkpoint)
    with pytest.raises(SystemExit):
        retrain_single_block.main(run_flags() + BLOCK[:6] + ["--epochs", "1", "--save_checkpoint_every", "1"])
    monkeypatch.setattr(RunDirectory, "log_metrics", log_metrics)
    (run / ".latest.pt.tmp-4194321-x").write_bytes(b"half a checkpoint")  # left by a killed write
    written = []
    save = checkpoint_module.save_checkpoint
    monkeypatch.setattr(
        checkpoint_module, "save_checkpoint", lambda state, path: (written.append(path.name), save(state, path))
    )
    retrain_single_block.main(run_flags() + BLOCK[:6] + ["--epochs", "1", "--save_checkpoint_every", "1"])
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]  # epoch 0 restored from the checkpoint, none twice
    assert written == ["best.pt", "epoch_001.pt", "latest.pt"]  # latest last: a kill before it leaves the old one
    assert not list(run.glob(".*tmp-*"))
