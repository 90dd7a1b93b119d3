import numpy as np
import pytest

from models import IGNORE_INDEX
from utils.data import MaskedSentences, TokenIds, collate, epoch_batches, load_masked_splits, split_sentences


def test_split_sentences_drops_headings_and_undoes_escapes():
    lines = [
        " = Valkyria Chronicles = \n",
        "\n",
        " The game 's 1 @,@ 000 copies sold . It was a well @-@ known title !\n",
        " Too short .\n",
        " A <unk> word is here today .\n",
    ]
    assert split_sentences(lines, "[UNK]") == [
        "The game 's 1,000 copies sold .",
        "It was a well-known title !",
        "A [UNK] word is here today .",
    ]


@pytest.fixture
def sentences(tokenizer):
    texts = [
        "the cat sat on the mat today .",
        "a much longer sentence about the history of the city of zurich .",
        "hi there you .",
    ]
    ids = tokenizer(texts)["input_ids"]
    return MaskedSentences(ids, TokenIds.of(tokenizer), seed=3), ids


def test_single_mask_is_one_real_token_and_reproducible(sentences, tokenizer):
    dataset, ids = sentences
    for index in range(len(dataset)):
        item = dataset[index]
        masked = np.flatnonzero(item["labels"] != IGNORE_INDEX)
        assert len(masked) == 1 and 0 < masked[0] < len(ids[index]) - 1  # never [CLS] or [SEP]
        assert item["input_ids"][masked[0]] == tokenizer.mask_token_id
        assert item["labels"][masked[0]] == ids[index][masked[0]]
        assert np.array_equal(dataset[index]["labels"], item["labels"])  # same epoch, same mask


def test_masks_change_between_training_epochs_but_not_for_evaluation(sentences):
    dataset, _ = sentences

    def positions(epoch):
        dataset.set_epoch(epoch)
        return [int(np.flatnonzero(dataset[i]["labels"] != IGNORE_INDEX)[0]) for i in range(len(dataset))]

    eval_masks = positions(0)
    training = [positions(epoch) for epoch in range(1, 9)]
    assert any(masks != training[0] for masks in training[1:])
    assert positions(0) == eval_masks


def test_mlm_masking_rate(tokenizer):
    ids = [tokenizer("word " * 38)["input_ids"]] * 200
    dataset = MaskedSentences(ids, TokenIds.of(tokenizer), seed=0, mlm_probability=0.15)
    dataset.set_epoch(1)
    rate = np.mean([np.mean(dataset[i]["labels"][1:-1] != IGNORE_INDEX) for i in range(len(dataset))])
    assert 0.12 < rate < 0.18


def test_collate_pads_dynamically(sentences):
    dataset, ids = sentences
    batch = collate([dataset[0], dataset[2]], pad_id=0)
    longest = max(len(ids[0]), len(ids[2]))
    assert batch["input_ids"].shape == (2, longest)
    assert batch["attention_mask"].sum(1).tolist() == [len(ids[0]), len(ids[2])]
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == IGNORE_INDEX).all() and (batch["input_ids"][pad] == 0).all()
    assert ((batch["labels"] != IGNORE_INDEX).sum(1) == 1).all()


def test_epoch_batches_cover_the_data_and_shard_over_ranks():
    batches = epoch_batches(10, 4, seed=1, epoch=1)
    assert sorted(i for batch in batches for i in batch) == list(range(10))
    assert batches == epoch_batches(10, 4, seed=1, epoch=1) and batches != epoch_batches(10, 4, seed=1, epoch=2)
    shards = [epoch_batches(10, 4, seed=1, epoch=1, rank=r, world_size=2) for r in range(2)]
    for global_batch, first, second in zip(batches, *shards, strict=True):
        assert sorted(first + second) == sorted(global_batch)


def test_load_masked_splits_truncates_to_seq_len(tiny_data_dir, tokenizer):
    splits = load_masked_splits(tiny_data_dir, tokenizer, seq_len=12, max_sentences=50, seed=0)
    assert len(splits.train) == 50 and 0 < len(splits.test) <= 50
    lengths = [len(ids) for ids in splits.train.input_ids]
    assert max(lengths) == 12 and min(lengths) >= 3
    assert all(ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id for ids in splits.train.input_ids)


def test_sitra_data_dir_is_the_default_data_folder(tiny_data_dir, tokenizer, monkeypatch):
    monkeypatch.setenv("SITRA_DATA_DIR", tiny_data_dir)
    assert len(load_masked_splits(None, tokenizer, seq_len=12, max_sentences=20, seed=0).validation) == 20


def test_group_by_length_keeps_every_sentence_and_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 41, size=1000).tolist()
    plain = epoch_batches(1000, 32, seed=1, epoch=1)
    grouped = epoch_batches(1000, 32, seed=1, epoch=1, lengths=lengths)
    assert sorted(i for batch in grouped for i in batch) == list(range(1000))
    assert grouped == epoch_batches(1000, 32, seed=1, epoch=1, lengths=lengths)  # still a function of (seed, epoch)
    padded = lambda batches: sum(len(b) * max(lengths[i] for i in b) for b in batches)  # noqa: E731
    assert padded(grouped) < 0.8 * padded(plain)
