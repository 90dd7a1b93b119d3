"""The shared activation store and multi-student runs: one teacher pass for many students, same weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import build_teacher_store
import retrain_merge
import retrain_single_block
import utils.students
from conftest import REPO, storage_of
from utils.data import load_masked_splits
from utils.teacher import load_teacher

NO_DROPOUT = ["--block_dropout", "0", "--epochs", "1"]


def checkpoint_weights(flags, kind: str, block: int, heads: int, d_k: int = 8, variant: str = "") -> dict:
    path = storage_of(flags).block_checkpoint(kind, block, heads, d_k, variant)
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.parametrize("dropout", ["0", "0.1"])
def test_a_multi_student_run_gives_each_student_the_weights_of_its_own_run(run_flags, tmp_path, dropout):
    """Without a store the four students train in lockstep (one teacher forward per batch), each with its own
    dropout stream: the weights of four separate runs."""
    together = run_flags(storage=tmp_path / "together")
    shapes = ["--block_heads", "2", "4", "--block_d_k", "8", "--block_dropout", dropout, "--epochs", "1"]
    histories = retrain_single_block.main(together + ["--block", "0", "2"] + shapes)
    assert sorted(histories) == ["block_0_8_2", "block_0_8_4", "block_2_8_2", "block_2_8_4"]
    for block in (0, 2):
        for heads in (2, 4):
            alone = run_flags(storage=tmp_path / f"alone_{block}_{heads}")
            single = [
                "--block",
                str(block),
                "--block_heads",
                str(heads),
                "--block_d_k",
                "8",
                "--block_dropout",
                dropout,
            ]
            retrain_single_block.main(alone + single + ["--epochs", "1"])
            expected = checkpoint_weights(alone, "block", block, heads)
            got = checkpoint_weights(together, "block", block, heads)
            assert all((got[name] - tensor).abs().max() <= 1e-6 for name, tensor in expected.items())


def test_lockstep_runs_one_teacher_forward_per_batch_for_all_merges(run_flags, tmp_path, monkeypatch):
    """Two merge pairs (0-1, 1-2) in lockstep: one teacher pass per training batch (not one per pair), and each merged
    layer ends as it does trained alone."""
    passes = []
    original = utils.students.teacher_pass
    monkeypatch.setattr(utils.students, "teacher_pass", lambda *args: passes.append(1) or original(*args))
    together = run_flags(storage=tmp_path / "together")
    merge = ["--block_heads", "2", "--block_d_k", "8", "--merge_init", "first", "--epochs", "2"]
    histories = retrain_merge.main(together + ["--block", "0", "1"] + merge)
    batches_per_epoch = histories["merge_0_8_2-init_first"][1]["step"]
    assert len(passes) == 2 * batches_per_epoch > 0
    for block in (0, 1):  # pair 1-2 ends at the last layer: its target is the teacher's output
        alone = run_flags(storage=tmp_path / f"alone_{block}")
        retrain_merge.main(alone + ["--block", str(block)] + merge)
        expected = checkpoint_weights(alone, "merge", block, 2, variant="-init_first")
        got = checkpoint_weights(together, "merge", block, 2, variant="-init_first")
        assert all((got[name] - tensor).abs().max() <= 1e-6 for name, tensor in expected.items())


def test_store_slices_equal_the_teachers_activations(run_flags, tiny_teacher_dir, tiny_data_dir, capsys):
    flags = run_flags() + ["--block_heads", "2", "--block_d_k", "8", "--teacher_store"] + NO_DROPOUT
    histories = retrain_single_block.main(flags + ["--block", "all"])
    merges = retrain_merge.main(flags + ["--block", "all"])
    assert len(histories) == 3 and [r["epoch"] for r in merges] == [0, 1]  # one pair: its records
    assert capsys.readouterr().err.count("building the teacher cache") == 1  # one pass served four runs
    stores = [path for path in storage_of(flags).cache("x").parent.glob("store_*") if path.is_dir()]
    assert len(stores) == 1
    folder = stores[0]
    teacher = load_teacher(tiny_teacher_dir)
    train = load_masked_splits(tiny_data_dir, teacher.tokenizer, 40, 96, 42).train
    train.set_epoch(1)
    offsets = np.load(folder / "offsets.npy")

    def stored(name, index):
        array = np.memmap(folder / f"{name}.f16", dtype=np.float16, mode="r", shape=(int(offsets[-1]), 32))
        return torch.from_numpy(array[offsets[index] : offsets[index + 1]].astype(np.float32))

    for index in (0, 50):
        ids = torch.from_numpy(train[index]["input_ids"])[None]
        mask = torch.ones_like(ids)
        hidden = teacher.model.encode(ids, mask, stop=2)
        assert torch.allclose(stored("hidden_2", index), hidden[0], atol=2e-3)
        attention = teacher.model.layers[2].attention(hidden, mask.bool())[0][0]
        assert torch.allclose(stored("attention_2", index), attention, atol=2e-3)
        assert torch.allclose(stored("hidden_3", index), teacher.model.encode(ids, mask)[0], atol=2e-3)

    retrain_single_block.main(
        flags + ["--block", "1", "--seq_len", "20", "--no_resume"]
    )  # another seq_len: another store
    assert "building the teacher cache" in capsys.readouterr().err
    assert len([path for path in folder.parent.glob("store_*") if path.is_dir()]) == 2


def test_two_processes_asking_for_one_store_build_it_once(run_flags):
    flags = run_flags(drop=["batch_size", "eval_sentences"])
    command = [sys.executable, "build_teacher_store.py", *flags]
    processes = [subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [process.communicate(timeout=300)[1] for process in processes]
    assert all(process.returncode == 0 for process in processes), logs
    assert sum(text.count("building the teacher cache") for text in logs) == 1
    assert build_teacher_store.main(flags)  # and it is reused


STORE_RUN = ["--block", "1", "--block_heads", "2", "--block_d_k", "8", "--teacher_store", *NO_DROPOUT]


def built_store(run_flags) -> tuple[list[str], Path]:
    flags = run_flags(drop=["batch_size", "eval_sentences"])
    return flags, Path(build_teacher_store.main(flags))


def error_line(capsys, call) -> str:
    """The one ``error:`` line a script ends with (cli_entry: exit 2)."""
    with pytest.raises(SystemExit):
        call()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


def test_a_truncated_store_file_is_one_error_naming_it_and_the_rebuild(run_flags, capsys):
    flags, folder = built_store(run_flags)
    header = json.loads((folder / "key.json").read_text())["files"]
    assert header["hidden_1.f16"]["shape"] == [int(np.load(folder / "offsets.npy")[-1]), 32]
    assert header["hidden_1.f16"]["dtype"] == "float16" and len(header["hidden_1.f16"]["sha256"]) == 64
    size = (folder / "hidden_1.f16").stat().st_size
    assert header["hidden_1.f16"]["bytes"] == size and "offsets.npy" in header
    os.truncate(folder / "hidden_1.f16", size // 2)
    line = error_line(capsys, lambda: retrain_single_block.main(run_flags() + STORE_RUN))
    assert f"{folder / 'hidden_1.f16'}: {size // 2} bytes, the header records {size}" in line
    assert "damaged" in line and f"rm -r {folder}" in line and "build_teacher_store.py" in line
    assert str(folder) in error_line(capsys, lambda: build_teacher_store.main(flags))  # the builder refuses it too


def test_nans_in_a_store_file_are_a_damaged_store_not_a_divergence(run_flags, capsys):
    _, folder = built_store(run_flags)
    offsets = np.load(folder / "offsets.npy")
    target = np.memmap(folder / "attention_1.f16", dtype=np.float16, mode="r+", shape=(int(offsets[-1]), 32))
    target[offsets[7] : offsets[8]] = np.nan  # the size stays: only training can meet it
    target.flush()
    del target
    line = error_line(capsys, lambda: retrain_single_block.main(run_flags() + STORE_RUN))
    assert f"{folder / 'attention_1.f16'}: non-finite values in sentences 7 (rows {offsets[7]}.." in line
    assert "damaged" in line and "--lr is not at fault" in line and "rerun with a smaller --lr" not in line


def test_verify_catches_a_flipped_byte_that_keeps_the_size(run_flags, capsys):
    flags, folder = built_store(run_flags)
    assert build_teacher_store.main(flags + ["--verify"]) == str(folder)
    with open(folder / "hidden_2.f16", "r+b") as handle:
        handle.seek(1001)
        byte = handle.read(1)
        handle.seek(1001)
        handle.write(bytes([byte[0] ^ 0x01]))
    assert build_teacher_store.main(flags) == str(folder)  # opening checks sizes only: it does not hash the store
    line = error_line(capsys, lambda: build_teacher_store.main(flags + ["--verify"]))
    assert f"{folder / 'hidden_2.f16'}: its content differs from the SHA-256 recorded" in line and "rm -r" in line


def test_a_store_built_before_checksums_opens_with_a_warning_and_is_still_size_checked(run_flags, capsys):
    flags, folder = built_store(run_flags)
    header = json.loads((folder / "key.json").read_text())
    del header["files"]  # as stores were written before they recorded their files
    (folder / "key.json").write_text(json.dumps(header, indent=2))
    capsys.readouterr()
    retrain_single_block.main(run_flags() + STORE_RUN)
    err = capsys.readouterr().err
    assert "building the teacher cache" not in err  # reused, not rebuilt
    warnings = [line for line in err.splitlines() if "built before stores recorded checksums" in line]
    assert len(warnings) == 1 and "cannot be verified" in warnings[0]
    assert "cannot be verified" in error_line(capsys, lambda: build_teacher_store.main(flags + ["--verify"]))
    size = (folder / "attention_2.f16").stat().st_size
    os.truncate(folder / "attention_2.f16", size - 2)
    line = error_line(capsys, lambda: build_teacher_store.main(flags))
    assert f"{folder / 'attention_2.f16'}: {size - 2} bytes, the header records {size}" in line and "rm -r" in line
