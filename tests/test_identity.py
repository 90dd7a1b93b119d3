"""Run identity (utils/identity.py): every flag that can change a run's result is in its identity or names
its folder; variants of one experiment train into their own folders and are found again by the same flags;
a diverging run stops with one error line and leaves only finite checkpoints."""

import dataclasses
import typing
from pathlib import Path

import pytest
import torch

import drop_layers
import finetune_conditioned_fully_merged
import finetune_fully_merged
import retrain_merge
import retrain_single_block
import train_block_till_end
import train_full_merged_model
import train_teacher
import utils.students
from bench import assemble as assemble_notebook
from conftest import one_line_error, storage_of
from utils.assembly import collect_attentions
from utils.identity import CONTINUABLE, NAMED, NEUTRAL
from utils.model_io import load_simplified, save_simplified
from utils.runs import VARIANT_GROUPS, variant_of_command_line
from utils.teacher import load_teacher

SHAPE = ["--block_heads", "2", "--block_d_k", "8"]

# every training script, the module whose already_finished it calls, and the flags it needs besides the run's
TRAINING_SCRIPTS = {
    "retrain_single_block": (retrain_single_block, utils.students, ["--block", "1", *SHAPE]),
    "retrain_merge": (retrain_merge, utils.students, ["--block", "0", *SHAPE]),
    "train_block_till_end": (train_block_till_end, train_block_till_end, ["--block", "1", *SHAPE]),
    "finetune_conditioned_fully_merged": (finetune_conditioned_fully_merged, finetune_conditioned_fully_merged, SHAPE),
    "finetune_fully_merged": (finetune_fully_merged, finetune_fully_merged, SHAPE),
    "drop_layers": (drop_layers, drop_layers, []),
    "train_full_merged_model": (train_full_merged_model, train_full_merged_model, SHAPE),
    "train_teacher": (train_teacher, train_teacher, []),
}
# flags that choose which runs an invocation makes (each run's own block and shape are in its name) and the
# teacher, which is identified by its weights' fingerprint (tests/test_cli_errors.py)
SELECTION = {"block", "block_heads", "block_d_k", "teacher", "init"}
# a second value for a flag whose first alternative would be refused as a combination
ALTERNATIVES = {
    "loss_on_logits": ["--criterion", "CrossEntropy", "--loss_on_logits"],
    "criterion": ["--criterion", "L1"],
    "init_from": ["--init_from", "none"],
    "all": ["--all", "False", "--block", "0"],
    "store_layers": ["--store_layers", "0", "1"],
    "drop_count": ["--drop_count", "2"],  # the tiny teacher has 3 layers
    # feed-forward students: --part ffn needs a width; their runs are ffn_{block}_{width}
    "part": ["--part", "ffn", "--ffn_width", "16"],
    "ffn_width": ["--part", "ffn", "--ffn_width", "16"],
    "ffn_init": ["--part", "ffn", "--ffn_width", "16", "--ffn_init", "neurons"],
    "model": ["--model", "/elsewhere/some_model"],
}


def alternative(group: type, field: dataclasses.Field) -> list[str]:
    """Flags that set ``field`` to a valid value other than its default."""
    if field.name in ALTERNATIVES:
        return ALTERNATIVES[field.name]
    kind, default = typing.get_type_hints(group)[field.name], field.default
    if "choices" in field.metadata:  # a registry's methods (models/methods.py)
        return [f"--{field.name}", next(choice for choice in field.metadata["choices"] if choice != default)]
    if typing.get_origin(kind) is typing.Union:  # Optional[X]: X
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        return [f"--{field.name}", next(choice for choice in typing.get_args(kind) if choice != default)]
    if kind is bool:
        return [f"--{field.name}", str(not default)]
    base = kind
    if base is int:
        return [f"--{field.name}", str((default or 2) + 1)]
    if base is float:
        return [f"--{field.name}", str(default / 2 if default else 0.5)]
    return [f"--{field.name}", "other"]


# flags a script refuses with an error line (tested with the script): no run to compare
REFUSED = {("train_teacher", "stop_patience")}


class Stop(Exception):
    pass


def run_of(monkeypatch, module, finished_module, argv) -> tuple[str, dict]:
    """The folder name and identity of the (first) run the script opens for ``argv``; nothing is trained."""
    opened = []

    def capture(run, flags, output=None):
        opened.append((run.path.name, run.identity))
        raise Stop

    monkeypatch.setattr(finished_module, "already_finished", capture)
    with pytest.raises(SystemExit):  # cli_entry turns Stop into exit 2
        module.main(argv)
    assert opened, f"{module.__name__} opened no run"
    return opened[0]


def script_flags(name: str) -> list[tuple[type, dataclasses.Field]]:
    return [(group, field) for group in TRAINING_SCRIPTS[name][0].GROUPS for field in dataclasses.fields(group)]


@pytest.mark.parametrize("name", sorted(TRAINING_SCRIPTS))
def test_every_flag_is_identity_or_declared_neutral(name, run_flags, tiny_teacher_dir, monkeypatch):
    """Changing any flag that is neither neutral nor continuable changes the run's folder or its identity (so it
    is a new run or a refusal, never 'already finished'); a neutral or continuable flag changes neither."""
    module, finished_module, extra = TRAINING_SCRIPTS[name]
    base = run_flags(drop=("teacher",)) + extra + (["--init", tiny_teacher_dir] if name == "train_teacher" else [])
    base += [] if name == "train_teacher" else ["--teacher", tiny_teacher_dir]
    if name == "finetune_conditioned_fully_merged":
        base += ["--all"]
    folder, identity = run_of(monkeypatch, module, finished_module, base)
    for group, field in script_flags(name):
        if field.name in SELECTION or field.name in ("data_dir", "storage_directory"):
            continue
        if (name, field.name) in REFUSED:
            continue
        changed = run_of(monkeypatch, module, finished_module, base + alternative(group, field))
        differs = changed != (folder, identity)
        declared = field.name in NEUTRAL or field.name in CONTINUABLE
        assert differs != declared, f"{name} --{field.name}: {'declared but changes' if declared else 'ignored'}"
        if field.name in NAMED:  # a named flag changes the folder, not only the identity
            assert changed[0] != folder and "-" in changed[0], (field.name, changed[0])


def test_the_declaration_names_only_real_flags_and_variant_groups_match_the_scripts():
    flags = {field.name for name in TRAINING_SCRIPTS for _, field in script_flags(name)}
    assert set(NEUTRAL) - flags <= {"device"} and set(CONTINUABLE) <= flags and set(NAMED) <= flags
    assert not set(NEUTRAL) & set(CONTINUABLE) and not set(NAMED) & (set(NEUTRAL) | set(CONTINUABLE))
    producers = {"block": "retrain_single_block", "merge": "retrain_merge", "till_end": "train_block_till_end"}
    producers["conditioned"] = "finetune_conditioned_fully_merged"
    for kind, script in producers.items():
        named = {field.name for _, field in script_flags(script) if field.name in NAMED}
        readers = {field.name for group in VARIANT_GROUPS[kind] for field in dataclasses.fields(group)}
        assert named == readers & set(NAMED), kind


def test_variants_train_into_their_own_folders_and_assembly_reads_each(run_flags, tiny_teacher_dir, capsys):
    """The issue's case: random init, then --student_init heads, then the criteria, each a new run."""
    flags = run_flags() + ["--block", "1", "--block_heads", "2", "--block_d_k", "8", "--epochs", "1"]
    variants = {
        "": [],
        "-init_heads": ["--student_init", "heads"],  # the tiny teacher's heads are 8 wide, as the student's
        "-l1": ["--criterion", "L1"],
        "-ce_logits": ["--criterion", "CrossEntropy", "--loss_on_logits"],
        "-scores": ["--loss_on_scores"],
    }
    for suffix, extra in variants.items():
        history = retrain_single_block.main(flags + extra)
        assert [record["epoch"] for record in history] == [0, 1], suffix  # trained, not "finished"
        assert "nothing to do" not in capsys.readouterr().err
    storage = storage_of(flags)
    names = sorted(path.name for path in storage.runs.iterdir() if path.is_dir())
    assert names == sorted(f"block_1_8_2{suffix}" for suffix in variants)
    teacher = load_teacher(tiny_teacher_dir)
    weights = {}
    for suffix, extra in variants.items():
        variant = variant_of_command_line("block", " ".join(extra))
        assert variant == suffix
        attentions, sources, _ = collect_attentions(
            storage.root, teacher.model, teacher.name, 2, 8, [1], "block", variant
        )
        assert sources[1] == storage.block_output("block", 1, 2, 8, suffix)
        weights[suffix] = attentions[1].query.weight
    assert all(not torch.equal(weights[""], weights[suffix]) for suffix in variants if suffix)
    # the same command again is the same experiment: finished, nothing retrained
    retrain_single_block.main(flags + variants["-l1"])
    assert "is finished (epoch 1, step" in capsys.readouterr().err


def test_finetune_variants_save_their_own_models(run_flags, tiny_teacher_5_layers):
    """Layer drop healed at two temperatures: two runs, two models; the first is not overwritten."""
    flags = run_flags(teacher=tiny_teacher_5_layers) + ["--baseline", "layer_drop", "--epochs", "1"]
    finetune_fully_merged.main(flags)
    storage = storage_of(flags)
    first = (storage.layer_drop_model() / "model.safetensors").read_bytes()
    history = finetune_fully_merged.main(flags + ["--temperature", "4"])
    assert [record["epoch"] for record in history] == [0, 1]
    assert storage.layer_drop_model("alternate", "-t4").is_dir()
    assert (storage.run("finetune_layer_drop-t4") / "latest.pt").exists()
    assert (storage.layer_drop_model() / "model.safetensors").read_bytes() == first


def test_a_finished_run_asked_for_another_learning_rate_is_refused(run_flags, capsys):
    flags = run_flags() + ["--block", "1", *SHAPE, "--epochs", "1"]
    retrain_single_block.main(flags)
    message = one_line_error(capsys, retrain_single_block.main, flags + ["--lr", "1e-4"])
    assert "is finished with lr=0.001 (flags say 0.0001)" in message and "--no_resume" in message
    retrain_single_block.main(flags + ["--lr", "1e-4", "--epochs", "2"])  # continuing it with the new lr is fine
    assert "lr changed from 0.001 (checkpoint) to 0.0001 (flags)" in capsys.readouterr().err


def finite(path: Path) -> bool:
    state = torch.load(path, weights_only=True)["model"]
    return all(tensor.isfinite().all() for tensor in state.values() if tensor.is_floating_point())


@pytest.mark.parametrize("script", ["retrain_single_block", "train_full_merged_model"])
def test_a_diverging_run_stops_and_keeps_its_last_finite_checkpoint(script, run_flags, tiny_teacher_dir, capsys):
    """An absurd learning rate: exit 2 with one error line naming epoch, step and lr; latest.pt is the last
    finite checkpoint; a rerun with a sane --lr resumes from it and finishes."""
    flags = run_flags() + SHAPE + ["--epochs", "2"]
    if script == "retrain_single_block":
        main, flags = retrain_single_block.main, flags + ["--block", "1"]
        latest = storage_of(flags).block_checkpoint("block", 1, 2, 8)
    else:  # the whole teacher's layers finetuned end to end: a saved model is needed first
        model = storage_of(flags).retrained_model(2, 8)
        teacher = load_teacher(tiny_teacher_dir)
        save_simplified(teacher.model, teacher.tokenizer, model)
        main, flags = train_full_merged_model.main, flags + ["--model", str(model), "--train_ffn"]
        latest = storage_of(flags).run("finetune_retrained_8_2-ffn") / "latest.pt"
    message = one_line_error(capsys, main, flags + ["--lr", "1e30"])
    assert "diverged: non-finite" in message and "at epoch 1, step" in message and "lr 1e+30" in message
    assert finite(latest) and torch.load(latest, weights_only=True)["epoch"] == 0
    history = main(flags + ["--lr", "1e-4"])
    assert [record["epoch"] for record in history] == [0, 1, 2] and finite(latest)


def test_the_notebook_assembles_the_variant_its_run_flags_name(run_flags, tiny_teacher_dir, tiny_data_dir):
    """bench/assemble.py (the notebook, headless) with a criterion's flags after --: the model it saves is made
    of that criterion's students, under that criterion's name."""
    flags = run_flags() + ["--block", "0", "1", *SHAPE, "--epochs", "1"]
    retrain_single_block.main(flags)
    retrain_single_block.main(flags + ["--criterion", "L1"])
    storage = storage_of(flags)
    common = ["--storage_directory", str(storage.root), "--teacher", tiny_teacher_dir, "--block_heads", "2"]
    common += ["--block_d_k", "8", "--data_dir", tiny_data_dir, "--eval_sentences", "16"]
    assemble_notebook.main(common + ["--", "--criterion", "L1"])
    model, _, meta = load_simplified(storage.retrained_model(2, 8, "-l1"))
    assert not storage.retrained_model(2, 8).exists()
    for block in (0, 1):
        assert meta["sources"][str(block)] == str(storage.block_output("block", block, 2, 8, "-l1"))
        trained = torch.load(storage.block_output("block", block, 2, 8, "-l1"), weights_only=True)["model"]
        assert torch.equal(model.layers[block].attention.query.weight, trained["query.weight"])
