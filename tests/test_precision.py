"""--precision auto: bf16 autocast where the hardware multiplies bf16 natively, fp32 elsewhere; resolved once per run,
recorded in its identity as bf16 or fp32; evaluations run, record and are compared in one precision."""

import contextlib
import json

import numpy as np
import pytest
import torch

import eval_retrained_12
import retrain_single_block
import utils.device
from conftest import one_line_error, storage_of
from models import assemble
from utils.args import TrainingArguments
from utils.checkpoint import check_identity
from utils.device import autocast, cpu_multiplies_bf16, resolve_precision
from utils.errors import UserError
from utils.evaluation import MASKS_KEY
from utils.model_io import save_simplified
from utils.report import compare_models, write_report
from utils.teacher import load_teacher
from utils.training import make_optimizer

BLOCK = ["--block", "1", "--block_heads", "2", "--block_d_k", "8"]


@pytest.fixture
def native_bf16(monkeypatch):
    """Whether the CPU multiplies bf16 natively, as the test says: ``native_bf16(True)``."""
    return lambda value: monkeypatch.setattr(utils.device, "cpu_multiplies_bf16", lambda: value)


def test_auto_is_bf16_where_bf16_is_native_and_fp32_elsewhere(native_bf16, monkeypatch):
    native_bf16(True)
    assert resolve_precision(torch.device("cpu"), "auto") == ("bf16", "auto: this CPU multiplies bf16 natively")
    native_bf16(False)
    assert resolve_precision(torch.device("cpu"), "auto")[0] == "fp32"
    assert isinstance(autocast(torch.device("cpu"), "auto"), contextlib.nullcontext)
    assert resolve_precision("cuda", "auto")[0] == "bf16"
    assert resolve_precision(torch.device("cpu"), "fp16") == ("fp16", "asked for")
    # the detection itself reads torch's CPU capability query
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True})
    assert cpu_multiplies_bf16()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "avx2": True})
    assert not cpu_multiplies_bf16()


def test_bf16_autocast_keeps_fp32_master_weights_and_optimizer_state(native_bf16):
    native_bf16(True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    optimizer = make_optimizer(model, TrainingArguments())
    with autocast(torch.device("cpu"), "auto"):
        output = model(torch.randn(8, 16))
    assert output.dtype == torch.bfloat16  # the forward ran in bf16
    output.float().square().mean().backward()
    optimizer.step()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    states = [value for state in optimizer.state.values() for value in state.values() if value.is_floating_point()]
    assert states and all(value.dtype == torch.float32 for value in states)


def test_a_run_records_the_precision_auto_resolved_to(native_bf16, run_flags, capsys):
    native_bf16(True)
    history = retrain_single_block.main(run_flags() + BLOCK + ["--epochs", "1"])
    assert history[-1]["block_mse"] < history[0]["block_mse"]
    chosen = [line for line in capsys.readouterr().err.splitlines() if "precision: " in line]
    assert len(chosen) == 1 and chosen[0].endswith("precision: bf16 (auto: this CPU multiplies bf16 natively)")
    state = torch.load(storage_of(run_flags()).block_checkpoint("block", 1, 2, 8), weights_only=True)
    assert state["identity"]["precision"] == state["flags"]["precision"] == "bf16"
    assert all(tensor.dtype == torch.float32 for tensor in state["model"].values())  # fp32 master weights
    exp_avg = [value["exp_avg"] for value in state["optimizer"]["state"].values()]
    assert exp_avg and all(value.dtype == torch.float32 for value in exp_avg)
    # the bf16 run is not resumed as fp32: asked for, or what auto means on a CPU without native bf16
    error = one_line_error(
        capsys, retrain_single_block.main, run_flags() + BLOCK + ["--epochs", "2", "--precision", "fp32"]
    )
    assert "does not match the flags: precision='bf16' (flags say 'fp32')" in error
    native_bf16(False)
    error = one_line_error(capsys, retrain_single_block.main, run_flags() + BLOCK + ["--epochs", "2"])
    assert "precision='bf16' (flags say 'fp32')" in error
    native_bf16(True)
    assert retrain_single_block.main(run_flags() + BLOCK + ["--epochs", "2"])[-1]["epoch"] == 2


def test_a_checkpoint_that_recorded_auto_resumes_only_in_what_auto_meant_then():
    """Before auto was resolved per run, a CPU run recorded "auto" and trained in fp32 (a GPU run: bf16)."""
    old = {"identity": {"precision": "auto", "block": 1}, "flags": {"precision": "auto"}}
    check_identity(old, {"precision": "fp32", "block": 1}, "latest.pt")  # no GPU in its RNG state: a CPU, fp32
    with pytest.raises(UserError, match="precision='auto, i.e. fp32' \\(flags say 'bf16'\\)"):
        check_identity(old, {"precision": "bf16", "block": 1}, "latest.pt")
    on_a_gpu = {**old, "rng": {"torch": None, "cuda": [None]}}  # its checkpoint says where it ran, wherever it resumes
    check_identity(on_a_gpu, {"precision": "bf16"}, "latest.pt")
    with pytest.raises(UserError, match="precision='auto, i.e. bf16' \\(flags say 'fp32'\\)"):
        check_identity(on_a_gpu, {"precision": "fp32"}, "latest.pt")


def test_evaluations_record_their_precision_and_a_report_compares_only_one(run_flags, tiny_teacher_dir, capsys):
    teacher = load_teacher(tiny_teacher_dir)
    storage = storage_of(run_flags())
    save_simplified(assemble(teacher.model), teacher.tokenizer, storage.model("copy"))
    flags = run_flags(drop=["batch_size", "eval_sentences"]) + ["--reference", "none", "--latency_repeats", "0"]
    eval_retrained_12.main(flags + ["--models", str(storage.model("copy")), "--evaluation", "fp32_eval"])
    written = json.loads((storage.results("fp32_eval") / "metrics.json").read_text())
    assert written["precision"] == "fp32"
    assert "evaluation precision: fp32" in capsys.readouterr().err
    # the copy's values as if evaluated in bf16 on the same masks, the teacher's in fp32: no paired difference
    other = storage.results("bf16_eval")
    other.mkdir(parents=True)
    (other / "metrics.json").write_text(json.dumps({**written, "precision": "bf16"}))
    with np.load(storage.results("fp32_eval") / "per_sentence.npz") as arrays:
        saved = {key: arrays[key] for key in arrays.files}
    for folder, model in ((other, "copy"), (storage.results("fp32_eval"), "teacher")):
        kept = {key: value for key, value in saved.items() if key.startswith(f"{model}/") or key == MASKS_KEY}
        np.savez(folder / "per_sentence.npz", **kept)
    with pytest.raises(UserError, match="--compare copy teacher: evaluations of different precisions"):
        compare_models(storage, "copy", "teacher")
    with pytest.raises(UserError, match="evaluations of different precisions .*bf16_eval: bf16.*fp32_eval: fp32"):
        write_report(storage, storage.root / "report", [])
    # an evaluation written before the precision was recorded ran in fp32
    (other / "metrics.json").write_text(
        json.dumps({key: value for key, value in written.items() if key != "precision"})
    )
    assert compare_models(storage, "copy", "teacher")["top1"]["difference"] == 0
