"""Bad input: a one-line ``error:`` message naming the flag or file, exit code 2, nothing saved is touched."""

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import GPT2Config

import eval_retrained_12
import retrain_single_block
import utils.students
from conftest import REPO, one_line_error, storage_of

BLOCK = ["--block", "1", "--block_heads", "2", "--block_d_k", "8", "--epochs", "1"]


def run_expecting_error(capsys, argv) -> str:
    return one_line_error(capsys, retrain_single_block.main, argv)


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
def test_bad_flags(run_flags, capsys, flags, expected):
    assert expected in run_expecting_error(capsys, run_flags() + BLOCK + flags)


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--lr", "-1"], "--lr must be positive, got -1.0"),
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--adam_beta1", "2"], "--adam_beta1 must be in [0, 1), got 2.0"),
        (["--block_dropout", "1.5"], "--block_dropout must be in [0, 1), got 1.5"),
        (["--eval_sentences", "0"], "--eval_sentences must be positive, got 0"),
        (["--seq_len", "2"], "--seq_len must be at least 3"),
        (["--block", "x"], "--block x: expected layer indices or 'all'"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate (see --help)"),
        (["--epoch", "3"], "unrecognized arguments: --epoch 3 (see --help)"),  # no abbreviations
    ],
)
def test_bad_values_are_refused_before_anything_is_loaded_or_written(run_flags, capsys, flags, expected):
    message = run_expecting_error(capsys, run_flags() + BLOCK + flags)
    assert expected in message
    assert "usage:" not in capsys.readouterr().err
    assert not storage_of(run_flags()).root.exists()


def test_missing_data_folder_and_empty_file(run_flags, capsys, tmp_path, monkeypatch):
    flags = run_flags() + BLOCK
    data_index = flags.index("--data_dir") + 1
    flags[data_index] = str(tmp_path / "nowhere")
    message = run_expecting_error(capsys, flags)
    assert message.startswith(f"error: --data_dir {tmp_path / 'nowhere'}: no such folder")
    from utils.args import DataArguments  # with the flags, before the teacher is loaded (train_teacher.py did after)
    from utils.errors import UserError

    with pytest.raises(UserError, match="missing wiki.valid.tokens"):
        (tmp_path / "partial").mkdir()
        (tmp_path / "partial" / "wiki.train.tokens").write_text(" The cat sat on the mat today .\n")
        DataArguments(data_dir=str(tmp_path / "partial"))
    monkeypatch.setenv("SITRA_DATA_DIR", str(tmp_path / "gone"))  # named as what gave it
    with pytest.raises(UserError, match=f"^SITRA_DATA_DIR {tmp_path / 'gone'}: no such folder"):
        DataArguments(data_dir=None)
    empty = tmp_path / "empty_data"
    empty.mkdir()
    for name in ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"):
        (empty / name).write_text("" if "test" in name else " The cat sat on the mat today .\n")
    flags[data_index] = str(empty)
    assert "wiki.test.tokens is empty" in run_expecting_error(capsys, flags)


def test_non_bert_teacher_is_refused(run_flags, capsys, tmp_path):
    GPT2Config().save_pretrained(tmp_path / "gpt2")
    flags = run_flags() + BLOCK
    flags[flags.index("--teacher") + 1] = str(tmp_path / "gpt2")
    assert "is a 'gpt2' model; sitra needs a BERT masked LM" in run_expecting_error(capsys, flags)


def test_truncated_and_mismatched_checkpoints_are_refused_and_kept(run_flags, capsys, tmp_path):
    retrain_single_block.main(run_flags() + BLOCK)
    latest = storage_of(run_flags()).block_checkpoint("block", 1, heads=2, d_k=8)
    before = digest(latest)

    message = run_expecting_error(capsys, run_flags() + BLOCK + ["--seq_len", "30", "--epochs", "2"])
    assert "does not match the flags: seq_len=40 (flags say 30)" in message
    assert digest(latest) == before

    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    truncated = digest(latest)
    message = run_expecting_error(capsys, run_flags() + BLOCK + ["--epochs", "2"])
    assert "is corrupt or truncated" in message and str(latest) in message
    assert digest(latest) == truncated
    metrics = latest.parent / "metrics.jsonl"
    assert len(metrics.read_text().splitlines()) == 2  # epochs 0 and 1, untouched


def test_no_resume_moves_the_old_run_aside(run_flags, tmp_path):
    retrain_single_block.main(run_flags() + BLOCK)
    retrain_single_block.main(run_flags() + BLOCK + ["--no_resume"])
    runs = sorted(p.name for p in storage_of(run_flags()).runs.iterdir() if p.suffix != ".lock")
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


def tiny_data(folder, train_text: str):
    folder.mkdir()
    for name in ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"):
        (folder / name).write_text(train_text if "train" in name else " The cat sat on the mat today .\n")
    return str(folder)


def test_shape_checks_read_the_config_not_the_weights(capsys, run_flags, tiny_teacher_dir, tmp_path):
    broken = tmp_path / "teacher_without_weights"
    shutil.copytree(tiny_teacher_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    flags = run_flags(teacher=broken)
    assert "--block 3: the teacher has 3 layers" in run_expecting_error(capsys, flags + BLOCK + ["--block", "3"])
    message = run_expecting_error(capsys, flags + BLOCK + ["--seq_len", "100"])
    assert "--seq_len 100: the teacher has 64 position embeddings" in message
    assert not storage_of(flags).root.exists()


def test_bad_data_files_are_one_line(capsys, run_flags, tmp_path):
    latin1 = tiny_data(tmp_path / "latin1", "")
    (tmp_path / "latin1" / "wiki.train.tokens").write_bytes(" Caf\xe9 au lait is a drink .\n".encode("latin-1"))
    message = run_expecting_error(capsys, run_flags(data_dir=latin1) + BLOCK)
    assert "wiki.train.tokens is not UTF-8 text" in message
    headings = tiny_data(tmp_path / "headings", " = Title = \n\n = = Section = = \n")
    assert "no usable sentences in the train split" in run_expecting_error(capsys, run_flags(data_dir=headings) + BLOCK)


def test_seq_len_3_keeps_only_sentences_with_a_maskable_token(run_flags, tmp_path):
    # at seq_len 3 a sentence starting with <unk> is [CLS] [UNK] [SEP]: nothing may be masked
    data = tiny_data(tmp_path / "unk", " <unk> is a town in the north .\n The river runs to the sea .\n" * 20)
    history = retrain_single_block.main(run_flags(data_dir=data, seq_len=3) + BLOCK)
    assert [record["epoch"] for record in history] == [0, 1]


def test_spec_of_the_wrong_shape_is_one_line(capsys, run_flags, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "sitra.json").write_text(json.dumps({"format": "sitra-simplified-bert", "layers": {"0": "x"}}))
    with pytest.raises(SystemExit) as exit_info:
        eval_retrained_12.main(run_flags(drop=["batch_size", "eval_sentences"]) + ["--model", str(model)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and errors == [
        f"error: --model {model}: sitra.json lacks teacher_config or layers"
    ]


@pytest.fixture
def mount_point(tmp_path):
    """A folder to mount a file system on (tests that need mount(8), i.e. root)."""
    point = tmp_path / "mounted"
    point.mkdir()
    yield point
    subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)  # even while a file is open


def mount(*args) -> None:
    result = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True, check=False)
    if result.returncode:
        pytest.skip(f"mount is not permitted here: {result.stderr.strip()}")


def test_read_only_storage_fails_before_work_and_a_finished_run_exits_0(capsys, run_flags, tmp_path, mount_point):
    storage = tmp_path / "storage"
    finished = retrain_single_block.main(run_flags(storage=storage) + BLOCK)
    mount("--bind", storage, mount_point)
    mount("-o", "remount,bind,ro", mount_point)
    before = sorted(str(p) for p in storage.rglob("*"))
    again = retrain_single_block.main(run_flags(storage=mount_point) + BLOCK)  # finished: nothing to do, exit 0
    assert again == finished and "is finished" in capsys.readouterr().err
    message = run_expecting_error(capsys, run_flags(storage=mount_point) + BLOCK + ["--epochs", "2"])
    assert "--storage_directory: cannot write to" in message and "Read-only file system" in message
    assert "Loading weights" not in capsys.readouterr().err
    assert sorted(str(p) for p in storage.rglob("*")) == before


def test_full_disk_while_checkpointing_names_path_and_space(capsys, run_flags, mount_point):
    mount("-t", "tmpfs", "-o", "size=12k", "tmpfs", mount_point)
    message = run_expecting_error(capsys, run_flags(storage=mount_point) + BLOCK)
    assert "cannot write checkpoint" in message and ".pt: the disk is full" in message and "MB free" in message
    assert not any(".tmp-" in p.name for p in mount_point.rglob("*"))


def test_unexpected_errors_are_one_line_too(run_flags, capsys, monkeypatch):
    monkeypatch.setattr(utils.students, "load_data", lambda *args, **kwargs: 1 / 0)
    assert "error: ZeroDivisionError: division by zero" in run_expecting_error(capsys, run_flags() + BLOCK)
    assert "Traceback" not in capsys.readouterr().err


def test_train_and_eval_without_arguments_list_their_sweeps():
    for script, sweep in ((".train", "blocks"), (".eval", "fully_merged")):
        result = subprocess.run(["bash", script], cwd=REPO, capture_output=True, text=True, check=False)
        assert result.returncode == 2 and "usage:" in result.stderr and f"  {sweep} " in result.stderr
        assert "unbound variable" not in result.stderr


TOP_LEVEL_SCRIPTS = sorted(path.stem for path in REPO.glob("*.py"))


@pytest.mark.parametrize("script", TOP_LEVEL_SCRIPTS)
def test_every_script_has_a_working_help(script, capsys):
    """``--help`` exits 0 and lists the script's flags (argparse %-formats help text: a stray '%' broke it)."""
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage:") and "--device" in shown  # every script takes --device
