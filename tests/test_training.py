import pytest
import torch

import retrain_single_block
from models import student_attention
from utils.data import eval_loader, load_masked_splits
from utils.objectives import AttentionDistillation, soft_cross_entropy
from utils.teacher import load_teacher
from utils.training import to_device


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir):
    return load_teacher(tiny_teacher_dir)


@pytest.fixture(scope="module")
def batch(teacher, tiny_data_dir):
    splits = load_masked_splits(tiny_data_dir, teacher.tokenizer, 24, 32, seed=0)
    return to_device(next(iter(eval_loader(splits.train, 32))), torch.device("cpu"))


@pytest.mark.parametrize(
    "criterion,on_logits,on_scores,heads",
    [("MSE", False, False, 2), ("L1", False, False, 2), ("CrossEntropy", True, False, 2),
     ("CrossEntropy", False, True, 4), ("CrossEntropy", False, True, 2), ("MSE", False, True, 4)],
)  # fmt: skip
def test_each_criterion_lowers_its_loss(teacher, batch, criterion, on_logits, on_scores, heads):
    torch.manual_seed(0)
    student = student_attention(teacher.model, heads=heads, d_k=8, dropout=0.0)
    objective = AttentionDistillation(teacher.model, 1, student, criterion, on_logits, on_scores, mlm_metrics=False)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        total, count = objective.loss(batch)
        loss = total / count
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    floor = loss_floor(objective, batch)  # cross-entropies are bounded below by the target's entropy
    assert torch.isfinite(torch.tensor(losses)).all()
    assert losses[-1] - floor < 0.7 * (losses[0] - floor)


@torch.no_grad()
def loss_floor(objective, batch) -> float:
    """The smallest value the objective's loss can take: the loss of the target against itself."""
    if objective.criterion != "CrossEntropy":
        return 0.0
    _, teacher_out, teacher_probs = objective.teacher_signal(batch)
    real = batch["attention_mask"].bool()
    if objective.loss_on_logits:
        target = teacher_out[real].softmax(-1)
    else:
        target = teacher_probs.transpose(1, 2)[real]  # [N, heads, T]
        if target.shape[1] != objective.trainable.heads:
            target = target.mean(1)
    return soft_cross_entropy(target, target.clamp_min(1e-12).log()).item()


def test_teacher_parameters_get_no_gradient(teacher, batch):
    student = student_attention(teacher.model, heads=2, d_k=8, dropout=0.1)
    AttentionDistillation(teacher.model, 2, student, mlm_metrics=False).loss(batch)[0].backward()
    assert all(p.grad is None for p in teacher.hf_model.parameters())
    assert all(p.grad is not None for p in student.parameters())


def _weights(storage):
    state = torch.load(storage / "checkpoints/wikitext2/block_1_8_2/latest.pt", weights_only=True)
    return state["model"], state


def test_resume_gives_the_same_weights_as_a_straight_run(common_flags, tmp_path):
    flags = [flag for flag in common_flags]
    storage_index = flags.index("--storage_directory") + 1
    block = ["--block", "1", "--block_heads", "2", "--block_d_k", "8", "--save_checkpoint_every", "1"]

    def run(storage, *extra):
        flags[storage_index] = str(storage)
        return retrain_single_block.main(flags + block + list(extra))

    straight = run(tmp_path / "a", "--epochs", "2")
    run(tmp_path / "b", "--epochs", "1")
    resumed = run(tmp_path / "b", "--epochs", "2")
    run(tmp_path / "c", "--epochs", "2", "--max_steps", "3")  # stops inside epoch 1 (6 batches an epoch)
    mid_epoch = run(tmp_path / "c", "--epochs", "2")

    expected, state = _weights(tmp_path / "a")
    assert state["epoch"] == 2 and state["step"] == 12
    for storage in ("b", "c"):
        weights, state = _weights(tmp_path / storage)
        assert state["epoch"] == 2 and state["step"] == 12
        for name, tensor in expected.items():
            assert (weights[name] - tensor).abs().max() <= 1e-6, (storage, name)
    assert [r["epoch"] for r in straight] == [r["epoch"] for r in resumed] == [r["epoch"] for r in mid_epoch] == [0, 1, 2]
    assert resumed[-1]["block_mse"] == pytest.approx(straight[-1]["block_mse"], rel=1e-5)
    assert straight[-1]["block_mse"] < straight[0]["block_mse"]
    run_dir = tmp_path / "a/checkpoints/wikitext2/block_1_8_2"
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["epoch_001.pt", "epoch_002.pt", "latest.pt"]
    assert "replaced_top1" in straight[-1] and "teacher_top1" in straight[-1]


def test_bf16_autocast_trains_on_cpu(common_flags):
    history = retrain_single_block.main(common_flags + ["--block", "0", "--block_heads", "2", "--block_d_k", "8",
                                                        "--epochs", "1", "--precision", "bf16"])  # fmt: skip
    assert torch.isfinite(torch.tensor(history[-1]["train_loss"])) and history[-1]["block_mse"] < history[0]["block_mse"]
