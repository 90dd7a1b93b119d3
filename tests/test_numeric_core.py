"""The numeric core against answers worked out by hand or counted by torch, not against ranges."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig

from models import IGNORE_INDEX, TransformerLayer
from models.cost import layer_flops_per_token
from utils.benchmark import measure_latencies
from utils.metrics import evaluate_mlm
from utils.objectives import output_distillation_loss
from utils.signals import STORED_INPUT, STORED_TARGET, TeacherSignal
from utils.statistics import interval, paired_difference

VOCAB = 10
SIGMOID_1 = 1 / (1 + math.exp(-1))


def logits(*rows: dict[int, float]) -> torch.Tensor:
    """[N, VOCAB] logits: the given token scores, every other token far below (probability ~ e^-100)."""
    table = torch.full((len(rows), VOCAB), -100.0)
    for index, row in enumerate(rows):
        for token, score in row.items():
            table[index, token] = score
    return table


class Fixed(nn.Module):
    """A 'model' that returns the same masked-token logits for any batch."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask, labels):
        return self.table


# two sentences, targets 1 and 3:
# sentence 0: teacher ranks 1 > 2 (right), model ranks 2 > 1 (wrong, disagrees; KL = 2*sigmoid(1) - 1)
# sentence 1: teacher and model both rank 0 > 3 (both wrong, they agree, KL = 0)
TEACHER = logits({1: 5.0, 2: 4.0}, {0: 5.0, 3: 1.0})
MODEL = logits({2: 5.0, 1: 4.0}, {0: 5.0, 3: 1.0})


def one_batch():
    labels = torch.full((2, 4), IGNORE_INDEX)
    labels[0, 1], labels[1, 2] = 1, 3
    return [{"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4), "labels": labels}]


def test_evaluate_mlm_on_hand_made_logits():
    metrics, details = evaluate_mlm(
        {"teacher": Fixed(TEACHER), "model": Fixed(MODEL)},
        one_batch(),
        torch.device("cpu"),
        reference=Fixed(TEACHER),
        keep_predictions=True,
    )
    teacher, model = metrics["teacher"], metrics["model"]
    assert teacher["top1"] == 0.5 and teacher["top5"] == 1.0 and teacher["in_reference_top1"] == 1.0
    assert model["top1"] == 0.0 and model["top5"] == 1.0 and model["top10"] == 1.0
    assert model["agree_top1"] == 0.5 and model["teacher_top1_in_top5"] == 1.0
    assert model["in_reference_top1"] == 0.5 and model["in_reference_top5"] == 1.0
    assert model["kl_from_teacher"] == pytest.approx((2 * SIGMOID_1 - 1) / 2, abs=1e-6)
    assert model["sentences"] == teacher["sentences"] == 2
    assert details.predictions["model"][:, 0].tolist() == [2, 0] and details.predictions["reference"].shape == (2, 10)
    assert details.values["model"]["top5"].tolist() == [1.0, 1.0] and details.values["model"][
        "agree_top1"
    ].tolist() == [0, 1]


def test_output_distillation_loss_known_values():
    labels = torch.tensor([1, 3])
    total, count = output_distillation_loss(TEACHER, TEACHER, labels, temperature=1.0, hard_label_weight=0.0)
    assert count == 2 and total.item() == pytest.approx(0.0, abs=1e-6)
    total, _ = output_distillation_loss(MODEL, TEACHER, labels, temperature=1.0, hard_label_weight=0.0)
    assert total.item() == pytest.approx(2 * SIGMOID_1 - 1, abs=1e-5)
    # at temperature T the logit gap 1 becomes 1/T, and the T^2 factor keeps the scale: (2 sigmoid(1/T) - 1) T
    total, _ = output_distillation_loss(MODEL, TEACHER, labels, temperature=2.0, hard_label_weight=0.0)
    assert total.item() == pytest.approx((2 / (1 + math.exp(-0.5)) - 1) * 2, abs=1e-5)
    # the hard label adds -log p_model(true token): log(1 + e) for sentence 0, 4 + log(1 + e^-4) for sentence 1
    total, _ = output_distillation_loss(MODEL, TEACHER, labels, temperature=1.0, hard_label_weight=1.0)
    expected = 2 * SIGMOID_1 - 1 + math.log(1 + math.e) + 4 + math.log(1 + math.exp(-4))
    assert total.item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("heads,d_k,intermediate", [(2, 8, 48), (4, 8, 64), (3, 5, 16)])
def test_layer_flops_match_torchs_count(heads, d_k, intermediate):
    config = BertConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4)
    layer = TransformerLayer.fresh(config, heads, d_k, 0.0, intermediate, {"kind": "merged", "teacher_layers": [0, 1]})
    length, hidden = 10, torch.randn(1, 10, 32)
    with FlopCounterMode(display=False) as counter:  # the explicit-softmax path: every matmul is visible
        layer.attention(hidden, torch.ones(1, length, dtype=torch.bool), return_probs=True)
        layer.ffn_out(layer.activation(layer.ffn_in(hidden)))
    assert layer_flops_per_token(layer.eval(), length) == counter.get_total_flops() / length


def test_teacher_signal_reads_a_stored_batch_and_computes_otherwise():
    computed = []
    signal = TeacherSignal(lambda batch: computed.append(batch) or (torch.zeros(1), torch.ones(1)))
    stored = {STORED_INPUT: torch.full((1, 2, 3), 2.0, dtype=torch.float16), STORED_TARGET: torch.ones(1, 2, 3)}
    hidden_in, target = signal(stored)
    assert hidden_in.dtype == torch.float32 and hidden_in.eq(2).all() and not computed
    assert signal({"input_ids": None})[1].eq(1).all() and len(computed) == 1


def test_a_model_equal_to_the_teacher_has_a_zero_width_paired_difference():
    rng = np.random.default_rng(0)
    hits = rng.random(500) < 0.3
    same = {"difference": 0.0, "low": 0.0, "high": 0.0, "excludes_zero": False, "p_value": 1.0}
    assert paired_difference(hits, hits) == same
    better = hits | (rng.random(500) < 0.2)  # the same sentences plus others: a real, paired improvement
    paired = paired_difference(better, hits)
    assert paired["excludes_zero"] and paired["low"] > 0 and paired["low"] < paired["difference"] < paired["high"]
    assert paired["p_value"] < 0.001  # the paired t-test agrees


def test_a_paired_interval_excludes_zero_exactly_where_its_p_value_is_below_the_level():
    """The first model right on 24 sentences the second misses and wrong on 10 it gets, of 400: +14 / 400, paired t
    p 0.016. Its interval at level 1 - a (95%, or a Holm step's) excludes 0 where p < a and not elsewhere, even a
    hair either side of p (a bootstrap of 1,000 resamples read those tails off its outermost resamples)."""
    second = (np.arange(400) < 200).astype(float)
    first = second.copy()
    first[200:224], first[:10] = 1.0, 0.0
    paired = paired_difference(first, second)
    assert paired["difference"] == pytest.approx(14 / 400) and paired["p_value"] == pytest.approx(0.0162, abs=1e-4)
    for alpha in (0.05, 0.02, paired["p_value"] * 1.001, paired["p_value"] * 0.999, 0.01, 0.05 / 45):
        at_level = paired_difference(first, second, confidence=1 - alpha)
        assert at_level["excludes_zero"] == (paired["p_value"] < alpha), alpha
        assert at_level["low"] < paired["low"] < paired["high"] < at_level["high"] or alpha == 0.05


def test_the_seed_and_sentence_bootstrap_resamples_both_levels():
    """Known answers: seeds that differ only by a constant per seed ([0.1, 0.2, 0.3], no spread over sentences)
    give the range of the seed means (each extreme 1/27 = 3.7% of the resamples, beyond the 2.5% tails); seeds that
    agree give the sentence bootstrap's width; the same sentences with the seeds apart give a wider interval."""
    from utils.statistics import seed_and_sentence_difference

    constant = np.array([[0.1] * 50, [0.2] * 50, [0.3] * 50])
    spread = seed_and_sentence_difference(constant, np.zeros_like(constant))
    assert spread["difference"] == pytest.approx(0.2)
    assert (spread["low"], spread["high"]) == pytest.approx((0.1, 0.3)) and spread["excludes_zero"]
    assert spread["p_value"] == pytest.approx(2 / 10001)  # every resample above 0: the smallest p it can give
    rng = np.random.default_rng(3)
    hits, other = (rng.random(2000) < 0.4).astype(float), (rng.random(2000) < 0.35).astype(float)
    agreeing = seed_and_sentence_difference(np.stack([hits] * 3), np.stack([other] * 3))
    sentences_only = paired_difference(hits, other)
    assert agreeing["difference"] == pytest.approx(sentences_only["difference"])
    width = sentences_only["high"] - sentences_only["low"]
    assert agreeing["high"] - agreeing["low"] == pytest.approx(width, rel=0.1)
    shifted = np.stack([other, other, other])  # the second model 6 points better or worse under two seeds
    shifted[0, np.flatnonzero(other == 0)[:120]] = 1
    shifted[1, np.flatnonzero(other)[:120]] = 0
    apart = seed_and_sentence_difference(np.stack([hits] * 3), shifted)
    assert apart["high"] - apart["low"] > 1.5 * width
    assert apart["p_value"] > agreeing["p_value"]
    wider = seed_and_sentence_difference(np.stack([hits] * 3), shifted, confidence=0.999)
    assert wider["low"] < apart["low"] and wider["high"] > apart["high"]
    with pytest.raises(ValueError, match=r"\[S, N\]"):
        seed_and_sentence_difference(hits, other)
    with pytest.raises(ValueError, match=r"\[S, N\]: \(2, 2000\) vs \(3, 2000\)"):  # checked before subtracting
        seed_and_sentence_difference(np.stack([hits] * 2), shifted)


def test_the_seed_and_sentence_bootstrap_draws_the_resamples_of_a_difference_once():
    """A report asks for a comparison at 95% and again at its Holm level: the second reuses the first's resamples
    (one entry kept), with the interval a fresh draw gives; other differences or another seed are drawn anew."""
    from utils import statistics

    rng = np.random.default_rng(4)
    first, second = (rng.random((2, 500)) < 0.4).astype(float), (rng.random((2, 500)) < 0.3).astype(float)
    statistics._ESTIMATES.clear()
    at_95 = statistics.seed_and_sentence_difference(first, second)
    at_99 = statistics.seed_and_sentence_difference(first, second, confidence=0.99)
    assert len(statistics._ESTIMATES) == 1 and at_99["low"] < at_95["low"] < at_95["high"] < at_99["high"]
    statistics._ESTIMATES.clear()
    assert statistics.seed_and_sentence_difference(first, second, confidence=0.99) == at_99  # drawn again: the same
    statistics.seed_and_sentence_difference(first, second, seed=1)
    statistics.seed_and_sentence_difference(first, 1 - second)
    assert len(statistics._ESTIMATES) == 3


def test_interval_covers_the_mean_and_narrows_with_more_sentences():
    rng = np.random.default_rng(1)
    widths = []
    for count in (200, 3200):
        hits = (rng.random(count) < 0.27).astype(float)
        low, high = interval(hits)
        assert low < hits.mean() < high
        widths.append(high - low)
    assert widths[1] < 0.4 * widths[0]  # about 1/sqrt(16) = 0.25 of it
    assert interval(np.ones(50)) == (1.0, 1.0)


def test_latency_is_measured_interleaved_with_its_spread(monkeypatch):
    calls = []

    class Model(nn.Module):
        config = BertConfig(vocab_size=2000)

        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, input_ids, attention_mask, labels):
            calls.append(self.name)
            return torch.zeros(1)

    timings = measure_latencies({"a": Model("a"), "b": Model("b")}, 2, 8, torch.device("cpu"), repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4  # round-robin, not all of a then all of b
    assert all(t["min"] <= t["median"] <= t["max"] for t in timings.values())
