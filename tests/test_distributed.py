"""torchrun with two gloo processes on the CPU gives the weights of one process with the same global batch."""

import os
import subprocess
import sys

import torch

from conftest import REPO, storage_of


def test_two_processes_match_one(run_flags, tmp_path):
    # dropout off: two processes draw other dropout masks than one process does for the same batch; fp32: under bf16
    # autocast (auto on a CPU that multiplies bf16) half batches round otherwise than whole ones, beyond 1e-5
    block = ["--block", "1", "--block_heads", "2", "--block_d_k", "8", "--block_dropout", "0", "--epochs", "2"]
    block += ["--precision", "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    latest = {}
    for processes in (1, 2):
        flags = run_flags(storage=tmp_path / f"p{processes}")
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            "retrain_single_block.py",
            *flags,
            *block,
        ]
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        run_dir = storage_of(flags).block_run("block", 1, heads=2, d_k=8)
        latest[processes] = torch.load(run_dir / "latest.pt", weights_only=True)
        metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert len(metrics) == 3  # epochs 0, 1, 2 written once, by rank 0 only
    assert latest[1]["step"] == latest[2]["step"] == 12
    for name, tensor in latest[1]["model"].items():
        assert (latest[2]["model"][name] - tensor).abs().max() <= 1e-5, name
