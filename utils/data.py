"""WikiText-2 sentences with masked tokens: loading, sentence splitting, tokenization, batching.

Randomness lives in two explicit places, both pure functions of ``(seed, epoch, index)``:
which token of a sentence is masked (:class:`MaskedSentences`) and the order of sentences
(:func:`epoch_batches`). Evaluation uses epoch 0, so every model compared sees the same masks;
training epochs are numbered from 1.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from datasets import DatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase

from models import IGNORE_INDEX
from utils.errors import UserError

if TYPE_CHECKING:  # utils.args checks --data_dir with wikitext_files: it imports this module, not this one it
    from utils.args import DataArguments

log = logging.getLogger(__name__)

SPLITS = {"train": "wiki.train", "validation": "wiki.valid", "test": "wiki.test"}
EVAL_EPOCH = 0
LENGTH_GROUP_BATCHES = 50  # group-by-length window, in batches
MIN_WORDS = 4  # shorter "sentences" are mostly list items and table debris
HEADING = re.compile(r"^\s*=(.*)=\s*$")
SENTENCE_END = re.compile(r"(?<= [.!?]) +(?=\S)")  # WikiText puts spaces around punctuation
WIKITEXT_ESCAPES = {" @-@ ": "-", " @,@ ": ",", " @.@ ": "."}


def wikitext_files(data_dir: str | None) -> dict[str, Path] | None:
    """Each split's WikiText-2 file (``wiki.*.tokens`` or ``.raw``) in ``data_dir``, else in ``$SITRA_DATA_DIR``;
    None when neither is set (the Hub). A missing folder or file is one error, checked with the flags, before
    anything is loaded (:class:`utils.args.DataArguments`)."""
    named = "--data_dir" if data_dir else "SITRA_DATA_DIR"  # the flag, else the environment variable
    data_dir = data_dir or os.environ.get("SITRA_DATA_DIR") or None
    if data_dir is None:
        return None
    folder = Path(data_dir)
    if not folder.is_dir():
        raise UserError(f"{named} {data_dir}: no such folder (expected one with wiki.{{train,valid,test}}.tokens)")
    files = {}
    for split, stem in SPLITS.items():
        candidates = [folder / f"{stem}.{suffix}" for suffix in ("tokens", "raw")]
        files[split] = next((path for path in candidates if path.is_file()), None)
        if files[split] is None:
            raise UserError(f"{named} {data_dir}: missing {stem}.tokens (or {stem}.raw)")
    return files


def load_wikitext(data_dir: str | None) -> DatasetDict:
    """The three WikiText-2 splits as line datasets (column ``text``).

    From ``data_dir`` (``wiki.{train,valid,test}.tokens`` or ``.raw``) when given, else from
    ``$SITRA_DATA_DIR`` when set, else from the hub.
    """
    data_dir = data_dir or os.environ.get("SITRA_DATA_DIR") or None
    found_files = wikitext_files(data_dir)
    if found_files is None:
        try:
            return load_dataset("wikitext", "wikitext-2-raw-v1")
        except Exception as error:  # the hub raises many types (ConnectionError, OSError, ...)
            raise UserError(
                f"cannot download WikiText-2 from the Hugging Face Hub ({type(error).__name__}); pass --data_dir "
                "or set SITRA_DATA_DIR to a folder with wiki.{train,valid,test}.tokens"
            ) from None
    files = {}
    for split, found in found_files.items():
        try:
            text = found.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise UserError(f"--data_dir {data_dir}: {found.name} is not UTF-8 text (byte {error.start})") from None
        if not text.strip():
            raise UserError(f"--data_dir {data_dir}: {found.name} is empty")
        files[split] = str(found)
    return load_dataset("text", data_files=files)


def clean_line(line: str, unk_token: str) -> str:
    """Undo WikiText's escapes and map ``<unk>`` to the tokenizer's unknown token."""
    for escape, char in WIKITEXT_ESCAPES.items():
        line = line.replace(escape, char)
    return line.replace("<unk>", unk_token).strip()


def split_sentences(lines: list[str], unk_token: str) -> list[str]:
    """Sentences of WikiText lines; headings, blank lines and fragments under MIN_WORDS words are dropped."""
    sentences = []
    for line in lines:
        if not line.strip() or HEADING.match(line):
            continue
        for sentence in SENTENCE_END.split(clean_line(line, unk_token)):
            if len(sentence.split()) >= MIN_WORDS:
                sentences.append(sentence)
    return sentences


def _sentences_batch(batch: dict, unk_token: str) -> dict:
    return {"sentence": split_sentences(batch["text"], unk_token)}


def _tokenize_batch(batch: dict, tokenizer: PreTrainedTokenizerBase, seq_len: int) -> dict:
    encoded = tokenizer(
        batch["sentence"], truncation=True, max_length=seq_len, return_attention_mask=False, return_token_type_ids=False
    )
    return {"input_ids": encoded["input_ids"]}


def tokenized_sentences(
    raw: DatasetDict, split: str, tokenizer: PreTrainedTokenizerBase, seq_len: int, max_sentences: int | None
) -> list[list[int]]:
    """Token ids of the split's sentences (with [CLS]/[SEP], at most ``seq_len``).

    ``datasets`` caches both maps on disk (keyed by its fingerprint of function, tokenizer and
    arguments), so a corpus is split and tokenized once.
    """
    sentences = raw[split].map(
        _sentences_batch,
        batched=True,
        remove_columns=raw[split].column_names,
        fn_kwargs={"unk_token": tokenizer.unk_token},
        desc=f"splitting {split}",
    )
    if len(sentences) == 0 or "sentence" not in sentences.column_names:
        raise UserError(f"no usable sentences in the {split} split of the data (headings or fragments only)")
    if max_sentences is not None:
        sentences = sentences.select(range(min(max_sentences, len(sentences))))
    tokens = sentences.map(
        _tokenize_batch,
        batched=True,
        remove_columns=["sentence"],
        desc=f"tokenizing {split}",
        fn_kwargs={"tokenizer": tokenizer, "seq_len": seq_len},
    )
    # a sentence needs a token that may be masked: not [CLS], [SEP], [UNK] (seq_len 3 can leave only [UNK])
    special = set(tokenizer.all_special_ids)
    ids = [row for row in tokens["input_ids"] if any(token not in special for token in row)]
    if not ids:
        raise UserError(
            f"no usable sentences in the {split} split of the data (headings only, or --seq_len {seq_len} leaves "
            f"no maskable token)"
        )
    return ids


@dataclass(frozen=True)
class TokenIds:
    """The few token ids that masking and padding need."""

    mask: int
    pad: int
    vocab_size: int
    special: frozenset[int]

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> TokenIds:
        return cls(
            tokenizer.mask_token_id, tokenizer.pad_token_id, len(tokenizer), frozenset(tokenizer.all_special_ids)
        )


class MaskedSentences(torch.utils.data.Dataset):
    """Sentences whose masked tokens are a pure function of ``(seed, epoch, index)``.

    ``mlm_probability=None``: exactly one token (never [CLS]/[SEP]) is replaced by [MASK] — the
    evaluation setting. Otherwise BERT's pretraining masking: each token is chosen with that
    probability (at least one per sentence) and replaced by [MASK] 80%, a random token 10%, kept 10%.
    """

    def __init__(
        self, input_ids: list[list[int]], token_ids: TokenIds, seed: int, mlm_probability: float | None = None
    ):
        self.input_ids = input_ids
        self.token_ids = token_ids
        self.seed = seed
        self.mlm_probability = mlm_probability
        self.epoch = EVAL_EPOCH
        self.pad_to: int | None = (
            None  # pad every batch to this length (the original repository's way; benchmarks only)
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return collate(items, self.token_ids.pad, self.pad_to)

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def __getitem__(self, index: int) -> dict:
        ids = np.array(self.input_ids[index])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        candidates = np.flatnonzero(~np.isin(ids, list(self.token_ids.special)))
        if self.mlm_probability is None:
            chosen = candidates[[rng.integers(len(candidates))]]
            replacement = np.full(1, self.token_ids.mask)
        else:
            chosen = candidates[rng.random(len(candidates)) < self.mlm_probability]
            if len(chosen) == 0:
                chosen = candidates[[rng.integers(len(candidates))]]
            action = rng.random(len(chosen))
            random_tokens = rng.integers(self.token_ids.vocab_size, size=len(chosen))
            replacement = np.where(
                action < 0.8, self.token_ids.mask, np.where(action < 0.9, random_tokens, ids[chosen])
            )
        labels = np.full_like(ids, IGNORE_INDEX)
        labels[chosen] = ids[chosen]
        ids[chosen] = replacement
        return {"input_ids": ids, "labels": labels}


def collate(items: list[dict], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sentence (or to ``pad_to``): input_ids, attention_mask, labels, each [B, T]."""
    length = max(len(item["input_ids"]) for item in items)
    length = max(length, pad_to or 0)
    batch = {
        "input_ids": torch.full((len(items), length), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(items), length), dtype=torch.long),
        "labels": torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long),
    }
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        batch["input_ids"][row, :n] = torch.from_numpy(item["input_ids"])
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = torch.from_numpy(item["labels"])
    return batch


def epoch_batches(
    num_items: int,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
    lengths: list[int] | None = None,
) -> list[list[int]]:
    """This process's share of every global batch of the epoch, in order.

    The order is a function of ``(seed, epoch)`` only; a global batch of ``batch_size`` sentences is
    split evenly over ``world_size`` processes, so the optimisation is the same for any process count.
    With ``lengths`` (group by length), the shuffled sentences are sorted by length within windows of
    ``LENGTH_GROUP_BATCHES`` batches and the batches shuffled again: batches hold sentences of similar
    length, so padding to the longest one wastes little.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_items) if shuffle else np.arange(num_items)
    if lengths is not None:
        window = batch_size * LENGTH_GROUP_BATCHES
        lengths = np.asarray(lengths)
        order = np.concatenate(
            [
                chunk[np.argsort(-lengths[chunk], kind="stable")]
                for chunk in np.split(order, range(window, num_items, window))
            ]
        )
    batches = [order[start : start + batch_size] for start in range(0, num_items, batch_size)]
    if lengths is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return [batch[rank::world_size].tolist() for batch in batches if len(batch) >= world_size]


def sequential_batches(count: int, batch_size: int, first: int = 0) -> list[list[int]]:
    """Items ``first..count-1`` in order, ``batch_size`` at a time."""
    return [list(range(start, min(start + batch_size, count))) for start in range(first, count, batch_size)]


def make_loader(dataset, batches: list[list[int]]) -> torch.utils.data.DataLoader:
    """Batches are built in the main process (masking is cheap and stays reproducible) by ``dataset.collate``.

    The loader gets its own generator: by default every new iterator draws a seed from the global
    torch RNG, which would shift the dropout stream of a run resumed mid-epoch.
    """
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=dataset.collate, generator=torch.Generator()
    )


def eval_loader(
    dataset: MaskedSentences, batch_size: int, limit: int | None = None, skip: int = 0
) -> torch.utils.data.DataLoader:
    """``limit`` sentences in corpus order after the first ``skip`` (default: all of them), masked as for epoch 0."""
    dataset.set_epoch(EVAL_EPOCH)
    stop = len(dataset) if limit is None else min(skip + limit, len(dataset))
    return make_loader(dataset, sequential_batches(stop, batch_size, first=skip))


def frequent_tokens(sentences: MaskedSentences, count: int) -> list[int]:
    """The ``count`` token ids that occur most often among the maskable tokens (not special) of ``sentences``,
    ties broken by id; sorted by id. The tokens a masked-token task predicts, most of the time."""
    counts = Counter(token for ids in sentences.input_ids for token in ids)
    for special in sentences.token_ids.special:
        counts.pop(special, None)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return sorted(token for token, _ in ranked[:count])


def training_shortlist(data: DataArguments, tokenizer: PreTrainedTokenizerBase, count: int) -> list[int]:
    """The shortlist of a shortlisted vocabulary head: the ``count`` most frequent maskable tokens of the training
    split (``data``'s sentences), by :func:`frequent_tokens`."""
    return frequent_tokens(load_data(data, tokenizer).train, count)


@dataclass
class WikiTextSplits:
    train: MaskedSentences
    validation: MaskedSentences
    test: MaskedSentences


def load_masked_splits(
    data_dir: str | None,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    max_sentences: int | None,
    seed: int,
    train_mlm_probability: float | None = None,
) -> WikiTextSplits:
    """Train (masked per epoch), validation and test (one fixed mask per sentence) sentences."""
    raw = load_wikitext(data_dir)
    token_ids = TokenIds.of(tokenizer)
    splits = {
        split: MaskedSentences(
            tokenized_sentences(raw, split, tokenizer, seq_len, max_sentences),
            token_ids,
            seed,
            train_mlm_probability if split == "train" else None,
        )
        for split in SPLITS
    }
    log.info("sentences: %s", ", ".join(f"{split} {len(data)}" for split, data in splits.items()))
    return WikiTextSplits(**splits)


def load_data(
    data: DataArguments, tokenizer: PreTrainedTokenizerBase, train_mlm_probability: float | None = None
) -> WikiTextSplits:
    """:func:`load_masked_splits` with the data flags (--data_dir, --seq_len, --max_sentences, --seed)."""
    return load_masked_splits(
        data.data_dir, tokenizer, data.seq_len, data.max_sentences, data.seed, train_mlm_probability
    )
