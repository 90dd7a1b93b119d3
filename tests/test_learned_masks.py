"""CoFi's learned structured masks: known answers. Fully open gates and no sparsity give the teacher back exactly;
a closed head is gone from the pruned model, which saves, exports and loads like the others; the pruned model
lands within the FLOPs asked for; a Lagrangian brings the gates' expected FLOPs to the target."""

import pytest
import torch
from transformers import AutoModelForMaskedLM, BertForMaskedLM

from conftest import tiny_config
from models import IGNORE_INDEX, SimplifiedBert
from models.cost import flops_per_token, model_cost
from models.learned_masks import LearnedMasks
from utils.export import export_hf
from utils.model_io import load_simplified, save_simplified

SEQ_LEN = 16


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return SimplifiedBert.from_teacher(BertForMaskedLM(tiny_config()).eval()).eval()


def batch():
    torch.manual_seed(1)
    ids = torch.randint(1000, 2000, (3, SEQ_LEN))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 3] = ids[:, 3]
    return ids, torch.ones_like(ids), labels


def encoder_flops(model) -> float:
    return model_cost(model, SEQ_LEN)["flops_per_token"]


def test_open_gates_and_no_sparsity_give_the_teacher_back_exactly(teacher):
    masks = LearnedMasks.of(teacher).eval()
    remove = masks.install(teacher)
    with torch.no_grad():
        gated = teacher(*batch())
    remove()
    pruned = masks.prune(teacher, encoder_flops(teacher), SEQ_LEN).eval()
    with torch.no_grad():
        assert torch.equal(gated, teacher(*batch())) and torch.equal(pruned(*batch()), teacher(*batch()))
    assert [layer.attention.heads for layer in pruned.layers] == [4, 4, 4]
    assert teacher.layers[0].attention.head_gate is None  # removed with the hooks


def test_a_closed_head_is_gone_and_the_pruned_model_saves_exports_and_loads(teacher, tokenizer, tmp_path):
    masks = LearnedMasks.of(teacher).eval()
    with torch.no_grad():
        masks.heads[1].log_alpha[2] = -10.0  # closed
        masks.neurons[0].log_alpha[:10] = -10.0
    remove = masks.install(teacher)
    with torch.no_grad():
        gated = teacher(*batch())
    remove()
    hidden, d_k = teacher.layers[0].attention.hidden, teacher.layers[0].attention.d_k
    kept = ((4, 54), (3, 64), (4, 64))
    open_units = sum(flops_per_token(hidden, heads, d_k, neurons, SEQ_LEN) for heads, neurons in kept)
    pruned = masks.prune(teacher, open_units, SEQ_LEN).eval()  # the budget of what the masks keep open
    assert [layer.attention.heads for layer in pruned.layers] == [4, 3, 4]
    assert [layer.ffn_in.out_features for layer in pruned.layers] == [54, 64, 64]
    with torch.no_grad():
        assert (pruned(*batch()) - gated).abs().max() < 1e-5  # the closed units computed nothing
    save_simplified(pruned, tokenizer, tmp_path / "cofi", {"method": "cofi"})
    back, _, _ = load_simplified(tmp_path / "cofi")
    export_hf(back, tokenizer, tmp_path / "hf")
    exported = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    ids, attention, labels = batch()
    with torch.no_grad():
        logits = exported(input_ids=ids, attention_mask=attention).logits[labels != IGNORE_INDEX]
        assert (logits - pruned(ids, attention, labels)).abs().max() < 1e-4


@pytest.mark.parametrize("share", [0.5, 0.25])
def test_the_pruned_model_lands_at_the_flops_asked_for(teacher, share):
    masks = LearnedMasks.of(teacher)
    torch.manual_seed(2)
    with torch.no_grad():
        for gates in [*masks.heads, *masks.neurons]:
            gates.log_alpha.normal_()
    target = share * encoder_flops(teacher)
    pruned = masks.prune(teacher, target, SEQ_LEN)
    neuron = 4 * teacher.layers[0].attention.hidden  # the cheapest unit: the pruned model is within one of it
    assert target - neuron < encoder_flops(pruned) <= target


def test_a_lagrangian_brings_the_expected_flops_to_the_target(teacher):
    masks = LearnedMasks.of(teacher).train()
    full = encoder_flops(teacher)
    lambdas = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.Adam([{"params": masks.parameters()}, {"params": [lambdas], "maximize": True}], lr=0.05)
    for _ in range(400):
        gap = masks.expected_flops(SEQ_LEN) / full - 0.5
        loss = lambdas[0] * gap + lambdas[1] * gap**2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert masks.expected_flops(SEQ_LEN).item() / full == pytest.approx(0.5, abs=0.03)


def test_prune_cofi_learns_masks_by_distillation_and_saves_a_model_at_its_budget(run_flags, tmp_path):
    import prune_cofi

    output = tmp_path / "models" / "cofi_50"
    argv = run_flags(seq_len=20) + [
        "--budget",
        "0.5",
        "--epochs",
        "2",
        "--mask_lr",
        "0.2",
        "--output_model",
        str(output),
    ]
    result = prune_cofi.main(argv)
    pruned, _, meta = load_simplified(output)
    assert meta["method"] == "cofi" and 0.48 <= result["flops_share"] <= 0.5
    assert [layer.attention.heads for layer in pruned.layers] == [heads for heads, _ in meta["kept_heads_and_neurons"]]
    history = result["history"]
    assert history[-1]["target_flops_share"] == 0.5  # the target reached the budget within the warm-up
    assert history[-1]["expected_flops_share"] < history[0]["expected_flops_share"]  # the masks closed some units
    assert all("train_flops" in record for record in history[1:])
    again = prune_cofi.main(argv)  # a finished run: nothing trained again, the model kept
    assert again == {"output": str(output)}


def test_cofi_is_a_family_of_the_field_planned_at_its_budgets(tmp_path):
    import sys

    import yaml

    from conftest import REPO
    from utils.errors import UserError
    from utils.study import Plan, Study

    study = yaml.safe_load((REPO / "tests" / "studies" / "bert_large.yaml").read_text())
    study["families"]["cofi"] = {"method": "cofi", "epochs": 2, "lagrangian_warmup": 0.25}
    study["comparisons"].append(["sitra_heads", "cofi"])
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    plan = Plan(Study.load(path), tmp_path / "root", sys.executable)
    assert [(model.name, model.method) for model in plan.models if model.family == "cofi" and not model.variant] == [
        ("cofi_50", "cofi"),
        ("cofi_25", "cofi"),
    ]
    command = plan.stage("model", "seed1", "cofi_25").command
    assert command[0].endswith("prune_cofi.py") and ("--budget", "0.25") == command[command.index("--budget") :][:2]
    assert "--lagrangian_warmup" in command and plan.stage("model", "seed1", "cofi_25").needs == ()
    study["families"]["cofi"]["rule"] = "top"  # another method's option
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(UserError, match=r"families.cofi: cofi takes no \['rule'\]"):
        Study.load(path)
