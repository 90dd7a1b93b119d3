"""Layer-wise healing: the layer map through dropped and merged depths, the loss on known tensors, and a teacher
that heals against itself at zero; models healed in lockstep end as each healed alone."""

import math
import shutil

import pytest
import torch
from transformers import BertForMaskedLM

import train_full_merged_model
from conftest import one_line_error, tiny_config
from models import SimplifiedBert, assemble, teacher_layer_map
from models.methods import merged_layer
from utils.model_io import load_simplified, save_simplified
from utils.objectives import HEALING, LayerwiseDistillation, layerwise_loss
from utils.teacher import load_teacher


@pytest.fixture
def teacher() -> SimplifiedBert:
    torch.manual_seed(0)
    return SimplifiedBert.from_teacher(BertForMaskedLM(tiny_config(num_hidden_layers=4)).eval()).eval()


def test_each_layer_stands_for_the_last_teacher_layer_it_replaces(teacher):
    assert teacher_layer_map(teacher) == [0, 1, 2, 3]
    assert teacher_layer_map(assemble(teacher, dropped={1, 3})) == [0, 2]
    assert teacher_layer_map(assemble(teacher, dropped={2, 3})) == [0, 1]
    merged = {first: merged_layer(teacher, first, 4, 8, 0.0, "first") for first in (0, 2)}
    assert teacher_layer_map(assemble(teacher, merged=merged)) == [1, 3]
    assert teacher_layer_map(assemble(teacher, merged={2: merged[2]})) == [0, 1, 3]


def test_the_layerwise_loss_of_known_tensors():
    """Two student layers standing for teacher layers 1 and 3: the first one off by 1 everywhere (MSE 1), the
    second exact (0); the first's attention uniform over 4 keys where the teacher's is one-hot (KL = log 4), the
    second with other heads (output only). A padded token counts in neither."""
    teacher_hiddens = [torch.randn(2, 5, 8) for _ in range(4)]
    one_hot = torch.zeros(2, 3, 5, 5)
    one_hot[..., 0] = 1
    teacher_probs = [one_hot] * 4
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[:, 4] = 0
    students = [teacher_hiddens[1] + 1, teacher_hiddens[3].clone()]
    students[0][:, 4] += 100  # padding: not compared
    uniform = torch.full((2, 3, 5, 5), 0.25)
    uniform[..., 4] = 0
    loss = layerwise_loss(students, [uniform, torch.ones(2, 2, 5, 5) / 5], teacher_hiddens, teacher_probs, [1, 3], mask)
    assert loss.item() == pytest.approx((1 + 0) / 2 + math.log(4), rel=1e-5)


def test_a_teacher_heals_against_itself_at_zero_and_a_changed_layer_does_not(teacher):
    torch.manual_seed(1)
    ids = torch.randint(1000, 2000, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    objective = HEALING["layerwise"].function(teacher, teacher, teacher)
    assert isinstance(objective, LayerwiseDistillation)
    total, count = objective.loss(batch, teacher)
    assert count == 3 and total.item() == pytest.approx(0, abs=1e-5)
    dropped = assemble(teacher, dropped={3})  # the same first three layers, the last one missing
    total, _ = LayerwiseDistillation(teacher, dropped, dropped).loss(batch, dropped)
    output_only, _ = HEALING["output"].function(teacher, dropped, dropped).loss(batch, dropped)
    assert abs(total.item() - output_only.item()) < 1e-7  # its layers match the teacher's 0, 1, 2: no layer loss
    changed = assemble(teacher, dropped={1})  # layers 2, 3 now see another input than the teacher's 2, 3
    total, _ = LayerwiseDistillation(teacher, changed, changed).loss(batch, changed)
    output_only, _ = HEALING["output"].function(teacher, changed, changed).loss(batch, changed)
    assert total.item() - output_only.item() > 1e-5


@pytest.mark.parametrize("healing", ["output", "layerwise"])
def test_models_healed_in_lockstep_end_as_each_healed_alone(healing, run_flags, tiny_teacher_dir, tmp_path, capsys):
    """Two models (the teacher whole, and without its layer 1) healed by one run, one teacher forward per batch,
    end with the weights each gets healed alone, dropout included; each in its own run and output folder."""
    teacher = load_teacher(tiny_teacher_dir)
    models = [tmp_path / "models" / name for name in ("whole", "dropped")]
    for folder, dropped in zip(models, (set(), {1}), strict=True):
        save_simplified(assemble(teacher.model, dropped=dropped), teacher.tokenizer, folder)
    heal = ["--train_layers", "--healing", healing, "--epochs", "2", "--lr", "1e-3"]
    alone = [tmp_path / "alone" / folder.name for folder in models]
    for model, output in zip(models, alone, strict=True):
        train_full_merged_model.main(
            run_flags(storage=tmp_path / "a") + heal + ["--model", str(model), "--output_model", str(output)]
        )
    together = [tmp_path / "together" / folder.name for folder in models]
    one_output = run_flags(storage=tmp_path / "b") + heal + ["--model", *map(str, models), "--output_model", "x"]
    assert "--output_model: one folder per --model (2), got 1" in one_line_error(capsys, train_full_merged_model.main,
                                                                                 one_output)  # fmt: skip
    histories = train_full_merged_model.main(
        run_flags(storage=tmp_path / "b") + heal + ["--model", *map(str, models), "--output_model", *map(str, together)]
    )
    assert [[record["epoch"] for record in history] for history in histories] == [[0, 1, 2], [0, 1, 2]]
    for one, other in zip(alone, together, strict=True):
        first, second = load_simplified(one)[0].state_dict(), load_simplified(other)[0].state_dict()
        assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
    changed = load_simplified(together[1])[0].state_dict()
    assert not torch.equal(
        changed["layers.0.ffn_in.weight"], assemble(teacher.model).state_dict()["layers.0.ffn_in.weight"]
    )


def test_a_model_rebuilt_in_place_is_not_taken_for_the_one_healed_before(run_flags, tiny_teacher_dir, tmp_path, capsys):
    """A heal is identified by its model's content as well as its path: the same model copied elsewhere is already
    healed; other weights at the same path are refused in one line, naming the fingerprint."""
    teacher = load_teacher(tiny_teacher_dir)
    model = tmp_path / "first" / "m"
    save_simplified(assemble(teacher.model, dropped={1}), teacher.tokenizer, model)
    heal = run_flags(storage=tmp_path / "s") + ["--train_layers", "--output_model", str(tmp_path / "healed")]
    history = train_full_merged_model.main(heal + ["--model", str(model)])
    copy = tmp_path / "second" / "m"
    shutil.copytree(model, copy)
    assert train_full_merged_model.main(heal + ["--model", str(copy)]) == history  # finished: nothing to do
    save_simplified(assemble(teacher.model, dropped={2}), teacher.tokenizer, model)  # rebuilt: same size, same path
    error = one_line_error(capsys, train_full_merged_model.main, heal + ["--model", str(model)])
    assert "does not match the flags" in error and "model_fingerprint=" in error


def test_a_model_that_diverges_in_lockstep_stops_alone_and_the_others_finish(run_flags, tiny_teacher_dir, tmp_path,
                                                                                capsys):  # fmt: skip
    """Of two models healed together, one whose activations overflow (its last feed-forward scaled by 1e30): its
    step is not applied, it is checkpointed where it stopped (finite), the other heals to the end and is saved,
    and the run ends with one error line naming the diverged one."""
    teacher = load_teacher(tiny_teacher_dir)
    models = [tmp_path / "models" / name for name in ("sane", "overflowing")]
    for folder in models:
        save_simplified(assemble(teacher.model), teacher.tokenizer, folder)
    overflowing = load_simplified(models[1])[0]  # a copy of its own, not the teacher's modules
    with torch.no_grad():
        overflowing.layers[-1].ffn_out.weight.mul_(1e30)
    save_simplified(overflowing, teacher.tokenizer, models[1])
    outputs = [tmp_path / "healed" / folder.name for folder in models]
    heal = run_flags(storage=tmp_path / "s") + ["--train_layers", "--epochs", "2", "--lr", "1e-3"]
    heal += ["--model", *map(str, models), "--output_model", *map(str, outputs)]
    message = one_line_error(capsys, train_full_merged_model.main, heal)
    assert "overflowing" in message and "diverged: non-finite loss at epoch 1, step 1" in message
    assert "sane" not in message.split("diverged")[0] and "(1 of 2 in lockstep finished)" in message
    assert outputs[0].exists() and not outputs[1].exists()
    runs = sorted((tmp_path / "s").rglob("latest.pt"))
    by_run = {path.parent.name: torch.load(path, weights_only=True) for path in runs}
    sane, diverged = (next(state for name, state in by_run.items() if key in name) for key in ("sane", "overflowing"))
    assert sane["epoch"] == 2
    assert all(tensor.isfinite().all() for tensor in diverged["model"].values() if tensor.is_floating_point())
