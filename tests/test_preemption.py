"""SIGTERM to a running CLI run: it checkpoints its place in the epoch and exits 75; the rerun continues
from that step and ends with the weights of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

import retrain_single_block
from conftest import REPO, storage_of
from utils.distributed import EXIT_REQUEUE

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
    assert state["batches_done"] > 0 or "preempted" not in stderr  # mid-epoch unless it hit an epoch boundary

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
