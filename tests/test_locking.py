"""One run per folder, and a resumed run is the run it claims to be (teacher content, changed flags)."""

import shutil
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

import retrain_single_block
from conftest import REPO, one_line_error, storage_of

BLOCK = ["--block", "1", "--block_heads", "2", "--block_d_k", "8"]


def error_of(capsys, argv) -> str:
    return one_line_error(capsys, retrain_single_block.main, argv)


def test_a_second_run_on_the_same_folder_fails_at_once(run_flags, capsys):
    lock = storage_of(run_flags()).block_run("block", 1, heads=2, d_k=8).with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    hold = f"from utils.files import RunLock; RunLock({str(lock)[:-5]!r}); print('held', flush=True); input()"
    # another process holds the run's lock, as a running training would
    holder = subprocess.Popen(
        [sys.executable, "-c", hold], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        message = error_of(capsys, run_flags() + BLOCK + ["--epochs", "1"])
        assert f"is in use by PID {holder.pid} on {socket.gethostname()}" in message
        assert "Loading weights" not in capsys.readouterr().err  # refused before the teacher was loaded
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing anything: its lock is taken over
    history = retrain_single_block.main(run_flags() + BLOCK + ["--epochs", "1"])
    assert [r["epoch"] for r in history] == [0, 1]
    assert "took over the lock" in capsys.readouterr().err


def test_the_teacher_is_identified_by_its_weights(run_flags, tiny_teacher_dir, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher_dir, teacher)
    flags = run_flags(teacher=teacher) + BLOCK
    retrain_single_block.main(flags + ["--epochs", "1"])
    moved = tmp_path / "teacher_moved"  # the same weights elsewhere: resumes
    shutil.copytree(teacher, moved)
    history = retrain_single_block.main(run_flags(teacher=moved) + BLOCK + ["--epochs", "2"])
    assert [r["epoch"] for r in history] == [0, 1, 2]
    weights = load_file(teacher / "model.safetensors")  # other weights at the same path: refused
    save_file({name: tensor + 0.01 for name, tensor in weights.items()}, teacher / "model.safetensors")
    message = error_of(capsys, flags + ["--epochs", "3"])
    assert "does not match the flags" in message and "teacher_fingerprint=" in message


def test_a_changed_learning_rate_is_applied_on_resume_and_said(run_flags, capsys):
    retrain_single_block.main(run_flags() + BLOCK + ["--epochs", "1"])
    retrain_single_block.main(run_flags() + BLOCK + ["--epochs", "2", "--lr", "0.01", "--adam_weight_decay", "0"])
    err = capsys.readouterr().err
    assert "lr changed from 0.001 (checkpoint) to 0.01 (flags)" in err and "weight_decay changed from 0.01" in err
    state = torch.load(storage_of(run_flags()).block_checkpoint("block", 1, 2, 8), weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.01 and state["flags"]["lr"] == 0.01
