import copy

import pytest
import torch
from transformers import BertForMaskedLM

from conftest import tiny_config
from models import IGNORE_INDEX, MultiHeadAttention, SimplifiedBert, assemble, merged_layer, student_attention


@pytest.fixture(scope="module")
def hf_teacher():
    torch.manual_seed(0)
    return BertForMaskedLM(tiny_config(vocab_size=120)).eval()


def padded_batch(vocab=120, batch=3, length=9):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, vocab, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, 6:] = 0
    attention_mask[2, 3:] = 0
    labels = torch.full((batch, length), IGNORE_INDEX)
    labels[:, 1] = 7
    labels[0, 5] = 9
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.mark.parametrize("heads,d_k", [(1, 8), (4, 8), (2, 5), (8, 16), (3, 32)])
def test_attention_shapes(heads, d_k):
    attention = MultiHeadAttention(hidden=32, heads=heads, d_k=d_k, dropout=0.1).eval()
    hidden = torch.randn(2, 7, 32)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3]).bool()
    output, probs = attention(hidden, mask, return_probs=True)
    assert output.shape == (2, 7, 32) and probs.shape == (2, heads, 7, 7)
    assert torch.allclose(probs.sum(-1), torch.ones(2, heads, 7))
    assert (probs[1, :, :, 4:] == 0).all()  # padded keys get no attention
    sdpa_output, no_probs = attention(hidden, mask)
    assert no_probs is None and torch.allclose(sdpa_output, output, atol=1e-6)
    assert (
        sum(p.numel() for p in attention.parameters()) == 3 * (32 * heads * d_k + heads * d_k) + heads * d_k * 32 + 32
    )


def test_attention_rejects_non_positive_sizes():
    with pytest.raises(ValueError):
        MultiHeadAttention(32, 0, 8)


def test_layer_view_reproduces_teacher_logits(hf_teacher):
    batch = padded_batch()
    expected = hf_teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = expected[batch["labels"] != IGNORE_INDEX]
    model = SimplifiedBert.from_teacher(hf_teacher).eval()
    assert (model(**batch) - expected).abs().max() <= 1e-5
    # the teacher's own weights copied into a student of the same shape change nothing
    students = {i: copy.deepcopy(model.layers[i].attention) for i in range(len(model.layers))}
    replaced = assemble(model, attentions=students).eval()
    assert (replaced(**batch) - expected).abs().max() <= 1e-5
    assert all(layer.origin["kind"] == "student_attention" for layer in replaced.layers)
    # and the copy is independent: perturbing it moves the output, the teacher stays
    with torch.no_grad():
        students[1].value.weight.add_(torch.randn_like(students[1].value.weight))
    assert (replaced(**batch) - expected).abs().max() > 1e-3
    assert (model(**batch) - expected).abs().max() <= 1e-5


def test_view_shares_parameters_with_the_teacher(hf_teacher):
    model = SimplifiedBert.from_teacher(hf_teacher)
    assert model.layers[0].attention.query.weight is hf_teacher.bert.encoder.layer[0].attention.self.query.weight
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf_teacher.parameters())


def test_student_attention_of_other_shape_runs_in_the_model(hf_teacher):
    model = SimplifiedBert.from_teacher(hf_teacher).eval()
    student = student_attention(model, heads=2, d_k=4, dropout=0.0)
    replaced = assemble(model, attentions={1: student}).eval()
    batch = padded_batch()
    assert replaced(**batch).shape == (4, 120)
    assert replaced.spec["layers"][1] == {
        "kind": "student_attention",
        "teacher_layers": [1],
        "heads": 2,
        "d_k": 4,
        "dropout": 0.0,
        "intermediate_size": 64,
    }
    assert sum(p.numel() for p in replaced.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("init", ["random", "first", "second"])
def test_merged_layer_and_layer_drop(hf_teacher, init):
    model = SimplifiedBert.from_teacher(hf_teacher).eval()
    merged = merged_layer(model, 0, heads=4, d_k=8, dropout=0.1, init=init)
    merged_model = assemble(model, merged={0: merged}).eval()
    assert len(merged_model.layers) == 2 and merged_model.layers[0].origin["teacher_layers"] == [0, 1]
    assert merged_model(**padded_batch()).shape == (4, 120)
    source = {"first": 0, "second": 1}.get(init)
    if source is not None:  # same shapes: everything is copied
        assert torch.equal(merged.attention.query.weight, model.layers[source].attention.query.weight)
        assert torch.equal(merged.ffn_in.weight, model.layers[source].ffn_in.weight)
    assert merged.ffn_in.out_features == model.config.intermediate_size
    dropped = assemble(model, dropped={1})
    assert [layer.origin["teacher_layers"] for layer in dropped.layers] == [[0], [2]]
    with pytest.raises(IndexError):
        merged_layer(model, 2, 4, 8, 0.1)
