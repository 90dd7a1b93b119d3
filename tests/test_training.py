import pytest
import torch

import retrain_single_block
from conftest import storage_of
from models import student_attention
from utils.assembly import checkpoint_spec, collect_attentions
from utils.data import collate, eval_loader, load_masked_splits
from utils.device import to_device
from utils.objectives import AttentionDistillation
from utils.storage import BlockRun
from utils.teacher import load_teacher


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir):
    return load_teacher(tiny_teacher_dir)


@pytest.fixture(scope="module")
def batch(teacher, tiny_data_dir):
    splits = load_masked_splits(tiny_data_dir, teacher.tokenizer, 24, 32, seed=0)
    return to_device(next(iter(eval_loader(splits.train, 32))), torch.device("cpu"))


@pytest.mark.parametrize(
    "criterion,on_logits,on_scores,heads",
    [
        ("MSE", False, False, 2),
        ("L1", False, False, 2),
        ("CrossEntropy", True, False, 2),
        ("CrossEntropy", False, True, 4),
        ("CrossEntropy", False, True, 2),
        ("MSE", False, True, 4),
    ],
)
def test_each_criterion_lowers_its_loss(teacher, batch, criterion, on_logits, on_scores, heads):
    torch.manual_seed(0)
    student = student_attention(teacher.model, heads=heads, d_k=8, dropout=0.0)
    objective = AttentionDistillation(teacher.model, 1, student, criterion, on_logits, on_scores, mlm_metrics=False)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        total, count = objective.loss(batch, objective.network)
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
    hidden_in, teacher_out = objective.signal(batch)
    real = batch["attention_mask"].bool()
    if objective.loss_on_logits:
        target = teacher_out[real].softmax(-1)
    else:
        teacher_probs = objective.teacher_attention(hidden_in, real, return_probs=True)[1]
        target = teacher_probs.transpose(1, 2)[real]  # [N, heads, T]
        if target.shape[1] != objective.trainable.heads:
            target = target.mean(1)
    return -(target * target.clamp_min(1e-12).log()).sum(-1).mean().item()  # the target's entropy


def test_teacher_parameters_get_no_gradient(teacher, batch):
    student = student_attention(teacher.model, heads=2, d_k=8, dropout=0.1)
    AttentionDistillation(teacher.model, 2, student, mlm_metrics=False).loss(batch, student)[0].backward()
    assert all(p.grad is None for p in teacher.hf_model.parameters())
    assert all(p.grad is not None for p in student.parameters())


def _weights(storage):
    state = torch.load(
        storage_of(["--storage_directory", storage]).block_checkpoint("block", 1, 2, 8), weights_only=True
    )
    return state["model"], state


def test_resume_gives_the_same_weights_as_a_straight_run(run_flags, tmp_path):
    block = ["--block", "1", "--block_heads", "2", "--block_d_k", "8", "--save_checkpoint_every", "1"]

    def run(storage, *extra):
        return retrain_single_block.main(run_flags(storage=storage) + block + list(extra))

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
    assert [r["epoch"] for r in straight] == [r["epoch"] for r in resumed] == [0, 1, 2]
    # the check at --max_steps 3 stays beside the epochs' own records (a curve over steps keeps it)
    assert [(r["epoch"], r["step"], "batches_done" in r) for r in mid_epoch] == [
        (0, 0, False),
        (1, 3, True),
        (1, 6, False),
        (2, 12, False),
    ]
    assert resumed[-1]["block_mse"] == pytest.approx(straight[-1]["block_mse"], rel=1e-5)
    assert straight[-1]["block_mse"] < straight[0]["block_mse"]
    run_dir = storage_of(["--storage_directory", tmp_path / "a"]).block_run("block", 1, heads=2, d_k=8)
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "epoch_001.pt", "epoch_002.pt", "latest.pt"]
    assert "replaced_top1" in straight[-1] and "teacher_top1" in straight[-1]


def test_bf16_autocast_trains_on_cpu(run_flags):
    history = retrain_single_block.main(
        run_flags() + ["--block", "0", "--block_heads", "2", "--block_d_k", "8", "--epochs", "1", "--precision", "bf16"]
    )
    assert (
        torch.isfinite(torch.tensor(history[-1]["train_loss"])) and history[-1]["block_mse"] < history[0]["block_mse"]
    )


def test_checkpoint_holds_the_module_spec_that_assembly_rebuilds(run_flags, tiny_teacher_dir):
    retrain_single_block.main(
        run_flags()
        + ["--block", "1", "--block_heads", "2", "--block_d_k", "8", "--epochs", "1", "--block_dropout", "0.3"]
    )
    path = storage_of(run_flags()).block_checkpoint("block", 1, heads=2, d_k=8)
    state = torch.load(path, weights_only=True)
    assert state["spec"] == {"heads": 2, "d_k": 8, "dropout": 0.3}
    teacher = load_teacher(tiny_teacher_dir)
    attentions, _, _ = collect_attentions(storage_of(run_flags()).root, teacher.model, teacher.name, 2, 8, [1])
    assert attentions[1].dropout == 0.3 and torch.equal(attentions[1].query.weight, state["model"]["query.weight"])
    # a checkpoint written before specs were stored: its shape comes from identity and flags
    del state["spec"]
    assert checkpoint_spec(state) == {"heads": 2, "d_k": 8, "dropout": 0.3}


def test_block_run_names_round_trip():
    run = BlockRun("merge", 3, heads=4, d_k=16)
    assert run.name == "merge_3_16_4" and BlockRun.parse(run.name) == run
    assert BlockRun.parse("block_1_8_2.old-20260101-120000") is None and BlockRun.parse("finetune_layer_drop") is None


@pytest.mark.parametrize("criterion", ["MSE", "L1", "CrossEntropy"])
def test_attention_score_loss_does_not_depend_on_padding(teacher, tiny_data_dir, criterion):
    splits = load_masked_splits(tiny_data_dir, teacher.tokenizer, 40, 8, seed=0)
    items = [splits.train[i] for i in range(2)]
    torch.manual_seed(0)
    student = student_attention(teacher.model, heads=2, d_k=8, dropout=0.0).eval()
    objective = AttentionDistillation(teacher.model, 1, student, criterion, loss_on_scores=True, mlm_metrics=False)
    losses = []
    for pad_to in (None, 40):
        batch = collate(items, teacher.tokenizer.pad_token_id, pad_to)
        total, count = objective.loss(batch, student)
        losses.append((total / count).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


class _ScriptedObjective:
    """A one-input feed-forward student (a block run: it has a spec) fit to 2x, whose evaluation reports scripted
    validation losses, one per evaluation."""

    validation_loss = "mse"

    def __init__(self, losses: list[float]):
        from models import FeedForward

        self.trainable = self.network = FeedForward.fresh(1, 2, torch.nn.GELU())
        self.losses = iter(losses)

    def loss(self, batch, network):
        prediction = network(batch["x"])
        return ((prediction - 2 * batch["x"]) ** 2).sum(), len(batch["x"])

    def evaluate(self, loader):
        return {"mse": next(self.losses)}


class _Numbers(torch.utils.data.Dataset):
    def __init__(self, count: int):
        self.values = torch.linspace(-1, 1, count).unsqueeze(1)

    def __len__(self):
        return len(self.values)

    def __getitem__(self, index):
        return index

    def set_epoch(self, epoch: int) -> None:
        pass

    def collate(self, indices):
        x = self.values[indices]
        return {"x": x, "attention_mask": torch.ones_like(x)}


def test_plateaued_known_answers():
    from utils.run_state import plateaued

    assert not plateaued([1.0, 0.5], None, 0.01)  # no rule
    assert not plateaued([1.0, 0.5], 1, 0.01)  # fell by half
    assert plateaued([1.0, 0.5, 0.499], 1, 0.01)  # fell by 0.2% of its best: flat
    assert plateaued([1.0, 0.5, 0.6], 1, 0.01)  # rose
    assert not plateaued([1.0, 0.5, 0.6], 2, 0.01)  # one flat epoch is not two
    assert plateaued([1.0, 0.5, 0.6, 0.55], 2, 0.01)  # 0.55 is not below the best before it, 0.5
    assert not plateaued([1.0, 0.5, 0.6, 0.4], 2, 0.01)
    assert not plateaued([1.0], 1, 0.01)  # nothing trained yet


def test_stop_patience_stops_each_lockstep_member_alone_and_a_rerun_is_done(tmp_path):
    from utils.args import TrainingArguments
    from utils.checkpoint import RunDirectory
    from utils.lockstep import fit_together
    from utils.run_state import Member, plateaued
    from utils.training import make_optimizer

    training = TrainingArguments(batch_size=4, epochs=5, stop_patience=1, stop_min_delta=0.1, group_by_length=False)
    scripts = {
        "flat": [1.0, 0.5, 0.49, 9, 9, 9],
        "falling": [1.0, 0.5, 0.25, 0.12, 0.06, 0.03],
        "rising": [1.0, 0.5, 0.7, 9, 9, 9],
    }
    runs = {name: RunDirectory(tmp_path / name, {"name": name}, save_every=1) for name in scripts}

    def members():
        objectives = {name: _ScriptedObjective(losses) for name, losses in scripts.items()}
        return [
            Member(objectives[name], runs[name], make_optimizer(objectives[name].trainable, training))
            for name in scripts
        ]

    flat, falling, rising = fit_together(members(), _Numbers(12), None, training, torch.device("cpu"), seed=0)
    assert [r["epoch"] for r in flat] == [0, 1, 2] and flat[-1]["stopped_early"] and flat[-1]["step"] == 6
    assert [r["epoch"] for r in falling] == [0, 1, 2, 3, 4, 5] and falling[-1]["step"] == 15
    assert not any(r.get("stopped_early") for r in falling)
    assert [r["epoch"] for r in rising] == [0, 1, 2] and rising[-1]["stopped_early"]

    # each run gives the stages after it its epoch of lowest validation loss: rising's is epoch 1, not its last
    from utils.storage import run_output

    def kept(name):
        return torch.load(run_output(runs[name].path), weights_only=True)

    assert [kept(name)["epoch"] for name in scripts] == [2, 5, 1]
    assert run_output(runs["rising"].path).name == "best.pt"
    epoch_1 = torch.load(runs["rising"].path / "epoch_001.pt", weights_only=True)["model"]
    last = torch.load(runs["rising"].latest, weights_only=True)["model"]
    assert all(torch.equal(kept("rising")["model"][key], value) for key, value in epoch_1.items())
    assert not all(torch.equal(last[key], value) for key, value in epoch_1.items())

    # rerun: the checkpoint's history says the run is finished before anything is loaded; more patience goes on
    def rule(patience):
        return lambda checkpoint: plateaued(checkpoint["validation_losses"], patience, 0.1)

    assert runs["flat"].prepare(5, None, False, stopped_early=rule(1))
    assert not runs["flat"].prepare(5, None, False, stopped_early=rule(2))


def test_the_teacher_refuses_stop_patience_before_loading(tmp_path, capsys):
    import train_teacher

    with pytest.raises(SystemExit) as stopped:
        train_teacher.main(["--init", "missing", "--storage_directory", str(tmp_path), "--stop_patience", "1"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: --stop_patience: the teacher stops by")


class _LinearObjective:
    """A linear map of 8 features to 4 on every token: 2 x 8 x 4 FLOPs a token forward, as many for its weights'
    gradient (its input needs none), so 128 FLOPs a (padded) token, known."""

    def __init__(self):
        self.trainable = self.network = torch.nn.Linear(8, 4)

    def loss(self, batch, network):
        return network(batch["x"]).pow(2).sum(), batch["x"].shape[0]

    def evaluate(self, loader):
        return {}


class _Tokens(_Numbers):
    def collate(self, indices):
        x = torch.ones(len(indices), 5, 8)  # 5 tokens a sentence, one padded (its compute counts: it is done)
        return {"x": x, "attention_mask": torch.tensor([[1, 1, 1, 1, 0]] * len(indices))}


def test_a_run_counts_its_training_flops_and_adds_them_to_its_stage(tmp_path, monkeypatch):
    import json

    from utils.args import TrainingArguments
    from utils.checkpoint import RunDirectory
    from utils.flops import run_flops
    from utils.training import fit

    stage = tmp_path / "flops" / "seed42" / "heal" / "kl.json"
    monkeypatch.setenv("SITRA_FLOPS_FILE", str(stage))
    training = TrainingArguments(batch_size=4, epochs=2, group_by_length=False, precision="fp32")
    run = RunDirectory(tmp_path / "linear", {"name": "linear"}, save_every=1)
    records = fit(_LinearObjective(), _Tokens(12), None, training, run, torch.device("cpu"), seed=0)
    per_epoch = 128 * 12 * 5  # FLOPs a token x sentences x padded length
    assert [record["train_flops"] for record in records[1:]] == [per_epoch, per_epoch]
    saved = json.loads(stage.read_text())
    assert set(saved["linear"]) == {"1", "2"} and run_flops(saved["linear"]) == 2 * per_epoch
