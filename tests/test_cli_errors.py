"""Bad input: a one-line ``error:`` message naming the flag or file, exit code 2, nothing saved is touched."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import GPT2Config

import retrain_single_block
from conftest import REPO, storage_of

BLOCK = ["--block", "1", "--block_heads", "2", "--block_d_k", "8", "--epochs", "1"]


def run_expecting_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        retrain_single_block.main(argv)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    return errors[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--block", "3"], "--block 3: the teacher has 3 layers"),
        (["--block", "-1"], "--block -1"),
        (["--block_heads", "0"], "--block_heads must be positive"),
        (["--block_d_k", "-4"], "--block_d_k must be positive"),
        (["--criterion", "CrossEntropy"], "--criterion CrossEntropy needs --loss_on_logits or --loss_on_scores"),
    ],
)
def test_bad_flags(capsys, common_flags, flags, expected):
    assert expected in run_expecting_error(capsys, common_flags + BLOCK + flags)


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--lr", "-1"], "--lr must be positive, got -1.0"),
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--adam_beta1", "2"], "--adam_beta1 must be in [0, 1), got 2.0"),
        (["--block_dropout", "1.5"], "--block_dropout must be in [0, 1), got 1.5"),
        (["--eval_sentences", "0"], "--eval_sentences must be positive, got 0"),
        (["--seq_len", "2"], "--seq_len must be at least 3"),
        (["--block", "x"], "argument --block: invalid int value: 'x' (see --help)"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate (see --help)"),
        (["--epoch", "3"], "unrecognized arguments: --epoch 3 (see --help)"),  # no abbreviations
    ],
)
def test_bad_values_are_refused_before_anything_is_loaded_or_written(capsys, common_flags, flags, expected):
    message = run_expecting_error(capsys, common_flags + BLOCK + flags)
    assert expected in message
    assert "usage:" not in capsys.readouterr().err
    assert not storage_of(common_flags).root.exists()


def test_missing_data_folder_and_empty_file(capsys, common_flags, tmp_path):
    flags = common_flags + BLOCK
    data_index = flags.index("--data_dir") + 1
    flags[data_index] = str(tmp_path / "nowhere")
    message = run_expecting_error(capsys, flags)
    assert message.startswith(f"error: --data_dir {tmp_path / 'nowhere'}: no such folder")
    empty = tmp_path / "empty_data"
    empty.mkdir()
    for name in ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"):
        (empty / name).write_text("" if "test" in name else " The cat sat on the mat today .\n")
    flags[data_index] = str(empty)
    assert "wiki.test.tokens is empty" in run_expecting_error(capsys, flags)


def test_non_bert_teacher_is_refused(capsys, common_flags, tmp_path):
    GPT2Config().save_pretrained(tmp_path / "gpt2")
    flags = common_flags + BLOCK
    flags[flags.index("--teacher") + 1] = str(tmp_path / "gpt2")
    assert "is a 'gpt2' model; sitra needs a BERT masked LM" in run_expecting_error(capsys, flags)


def test_truncated_and_mismatched_checkpoints_are_refused_and_kept(capsys, common_flags, tmp_path):
    retrain_single_block.main(common_flags + BLOCK)
    latest = storage_of(common_flags).block_checkpoint("block", 1, heads=2, d_k=8)
    before = digest(latest)

    message = run_expecting_error(capsys, common_flags + BLOCK + ["--criterion", "L1", "--epochs", "2"])
    assert "does not match the flags: criterion='MSE' (flags say 'L1')" in message
    assert digest(latest) == before

    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    truncated = digest(latest)
    message = run_expecting_error(capsys, common_flags + BLOCK + ["--epochs", "2"])
    assert "is corrupt or truncated" in message and str(latest) in message
    assert digest(latest) == truncated
    metrics = latest.parent / "metrics.jsonl"
    assert len(metrics.read_text().splitlines()) == 2  # epochs 0 and 1, untouched


def test_no_resume_moves_the_old_run_aside(common_flags, tmp_path):
    retrain_single_block.main(common_flags + BLOCK)
    retrain_single_block.main(common_flags + BLOCK + ["--no_resume"])
    runs = sorted(p.name for p in storage_of(common_flags).runs.iterdir() if p.suffix != ".lock")
    assert runs[0] == "block_1_8_2" and runs[1].startswith("block_1_8_2.old-") and len(runs) == 2


def test_unreachable_hub_teacher_gives_one_line_from_the_real_cli(tiny_data_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "retrain_single_block.py",
            "--teacher",
            "no-such-org/no-such-bert",
            "--block",
            "0",
            "--data_dir",
            tiny_data_dir,
            "--storage_directory",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--teacher no-such-org/no-such-bert" in errors[0] and "'minilm'" in errors[0]
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())
