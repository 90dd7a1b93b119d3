import json

import numpy as np
import pytest
import torch

import retrain_merge
import retrain_single_block
from conftest import storage_of
from utils.data import load_masked_splits
from utils.teacher import load_teacher

BLOCK = ["--block", "2", "--block_heads", "2", "--block_d_k", "8", "--epochs", "1"]


def test_cached_signals_equal_the_teachers(run_flags, tiny_teacher_dir, tiny_data_dir, tmp_path, capsys):
    retrain_single_block.main(run_flags() + BLOCK + ["--cache_teacher"])
    assert "building the teacher cache" in capsys.readouterr().err
    folder = storage_of(run_flags()).cache("block_2")
    key = json.loads((folder / "key.json").read_text())
    assert key["block"] == 2 and key["seq_len"] == 40 and key["masking_seed"] == 42 and len(key["data"]) == 40

    teacher = load_teacher(tiny_teacher_dir)
    train = load_masked_splits(tiny_data_dir, teacher.tokenizer, 40, 96, 42).train
    train.set_epoch(1)  # the cache keeps the masks of training epoch 1
    offsets = np.load(folder / "offsets.npy")
    inputs = np.memmap(folder / "input.f16", dtype=np.float16, mode="r", shape=(int(offsets[-1]), 32))
    targets = np.memmap(folder / "target.f16", dtype=np.float16, mode="r", shape=(int(offsets[-1]), 32))
    for index in (0, 5, 95):
        item = train[index]
        ids = torch.from_numpy(item["input_ids"])[None]
        mask = torch.ones_like(ids)
        hidden_in = teacher.model.encode(ids, mask, stop=2)[0]
        target = teacher.model.layers[2].attention(hidden_in[None], mask.bool())[0][0]
        rows = slice(offsets[index], offsets[index + 1])
        assert torch.allclose(torch.from_numpy(inputs[rows].astype(np.float32)), hidden_in, atol=2e-3)
        assert torch.allclose(torch.from_numpy(targets[rows].astype(np.float32)), target, atol=2e-3)

    retrain_single_block.main(run_flags() + BLOCK + ["--cache_teacher", "--no_resume"])
    assert "building the teacher cache" not in capsys.readouterr().err  # same key: reused
    retrain_single_block.main(run_flags() + BLOCK + ["--cache_teacher", "--no_resume", "--seq_len", "20"])
    assert "building the teacher cache" in capsys.readouterr().err  # seq_len changed: rebuilt
    assert json.loads((folder / "key.json").read_text())["seq_len"] == 20


@pytest.mark.parametrize("script,metric", [(retrain_single_block, "block_mse"), (retrain_merge, "merge_mse")])
def test_cache_gives_the_metrics_of_an_uncached_run(run_flags, tmp_path, script, metric):
    # one epoch: the uncached run masks as epoch 1 too, so only fp16 rounding of the cache differs
    block = ["--block", "0"] + BLOCK[2:]
    histories = {}
    for cached in (False, True):
        flags = run_flags(storage=tmp_path / str(cached))
        histories[cached] = script.main(flags + block + (["--cache_teacher"] if cached else []))
    plain, cached = histories[False][-1], histories[True][-1]
    assert cached[metric] == pytest.approx(plain[metric], rel=1e-2)
    assert cached[metric] < histories[True][0][metric]
