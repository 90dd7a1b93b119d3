"""``--cache_teacher``: the teacher's input and target of the block being trained, computed once.

The frozen teacher's layers below the block cost most of a training step (nearly all of it for the last
layers). With the cache they run once: for every training sentence the hidden state entering the block
and the block's target are stored as fp16 memory-mapped arrays under
the storage directory's cache folder (``input.f16``, ``target.f16``: [total tokens, hidden]; ``offsets.npy``:
[sentences + 1]; ``key.json``). Later epochs read them instead of running the teacher.

The activations depend on which token is masked, so with the cache every training sentence keeps one
mask, the one of training epoch 1 (the "masking seed"); the order of sentences still changes every
epoch. The cache is keyed by teacher, data (a hash of the token ids), block, seq_len and masking seed,
and rebuilt when any of them differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from utils.args import Flags
from utils.data import MaskedSentences, make_loader, sequential_batches
from utils.device import to_device
from utils.distributed import Distributed, init_distributed
from utils.files import temporary_prefix
from utils.signals import STORED_INPUT, STORED_TARGET, Signal, TeacherSignal
from utils.storage import Storage

log = logging.getLogger(__name__)

CACHE_EPOCH = 1  # the training masks every cached sentence keeps
KEY_FILE = "key.json"


def data_fingerprint(sentences: MaskedSentences) -> str:
    digest = hashlib.sha1()
    for ids in sentences.input_ids:
        digest.update(np.asarray(ids, dtype=np.int32).tobytes())
    return digest.hexdigest()


class CachedSignals(torch.utils.data.Dataset):
    """Training items ``{STORED_INPUT: [n, H], STORED_TARGET: [n, H]}`` (fp16), read from the cache: a
    dataset of (input, target) that :class:`utils.signals.TeacherSignal` reads."""

    def __init__(self, folder: Path, hidden: int):
        self.offsets = np.load(folder / "offsets.npy")
        tokens = int(self.offsets[-1])
        self.inputs = np.memmap(folder / "input.f16", dtype=np.float16, mode="r", shape=(tokens, hidden))
        self.targets = np.memmap(folder / "target.f16", dtype=np.float16, mode="r", shape=(tokens, hidden))

    def set_epoch(self, epoch: int) -> None:
        """The cached masks are those of epoch 1, whatever the epoch."""

    def lengths(self) -> list[int]:
        return np.diff(self.offsets).tolist()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> dict:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return {
            STORED_INPUT: torch.from_numpy(np.array(self.inputs[start:stop])),
            STORED_TARGET: torch.from_numpy(np.array(self.targets[start:stop])),
        }

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return collate_cached(items)


def collate_cached(items: list[dict]) -> dict[str, torch.Tensor]:
    """Pad to the longest sentence: stored input and target [B, T, H] fp16, attention_mask [B, T]."""
    length, hidden = max(len(item[STORED_INPUT]) for item in items), items[0][STORED_INPUT].shape[1]
    batch = {key: torch.zeros(len(items), length, hidden, dtype=torch.float16) for key in (STORED_INPUT, STORED_TARGET)}
    batch["attention_mask"] = torch.zeros(len(items), length, dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item[STORED_INPUT])
        batch[STORED_INPUT][row, :n] = item[STORED_INPUT]
        batch[STORED_TARGET][row, :n] = item[STORED_TARGET]
        batch["attention_mask"][row, :n] = 1
    return batch


def open_cache(
    folder: Path,
    key: dict,
    train_set: MaskedSentences,
    hidden: int,
    device: torch.device,
    signal: Callable[[dict], Signal],
    world: Distributed,
    batch_size: int = 128,
) -> CachedSignals:
    """The cache at ``folder`` for ``key``; (re)built first by rank 0 when missing or made for another key."""
    key = {**key, "data": data_fingerprint(train_set), "masking_epoch": CACHE_EPOCH}
    if world.is_main and _saved_key(folder) != key:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):  # a concurrent run with the same cache waits, then reuses it
            if _saved_key(folder) != key:
                _build(folder, key, train_set, hidden, device, signal, batch_size)
    world.barrier()
    return CachedSignals(folder, hidden)


def _saved_key(folder: Path) -> dict | None:
    try:
        return json.loads((folder / KEY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


@torch.no_grad()
def _build(folder, key, train_set, hidden, device, signal, batch_size) -> None:
    lengths = np.array(train_set.lengths())
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = int(offsets[-1])
    size = 2 * tokens * hidden * 2
    log.info(
        "building the teacher cache %s: %d sentences, %d tokens, %.2f GB (fp16 input + target)",
        folder,
        len(lengths),
        tokens,
        size / 1e9,
    )
    scratch = Path(tempfile.mkdtemp(prefix=temporary_prefix(folder), dir=folder.parent))
    tmp = scratch / "cache"
    tmp.mkdir()
    inputs = np.memmap(tmp / "input.f16", dtype=np.float16, mode="w+", shape=(tokens, hidden))
    targets = np.memmap(tmp / "target.f16", dtype=np.float16, mode="w+", shape=(tokens, hidden))
    train_set.set_epoch(CACHE_EPOCH)
    loader = make_loader(train_set, sequential_batches(len(train_set), batch_size))  # corpus order, epoch-1 masks
    index = 0
    for batch in tqdm(loader, desc="teacher cache"):
        hidden_in, target = signal(to_device(batch, device))
        for row, length in enumerate(batch["attention_mask"].sum(1).tolist()):
            start, stop = offsets[index], offsets[index + 1]
            inputs[start:stop] = hidden_in[row, :length].float().cpu().numpy()
            targets[start:stop] = target[row, :length].float().cpu().numpy()
            index += 1
    inputs.flush()
    targets.flush()
    np.save(tmp / "offsets.npy", offsets)
    (tmp / KEY_FILE).write_text(json.dumps(key, indent=2))  # written last: a cache without it is rebuilt
    if folder.exists():
        os.replace(folder, scratch / "old")
    os.replace(tmp, folder)
    shutil.rmtree(scratch, ignore_errors=True)


def teacher_training_set(
    flags: Flags,
    teacher_name: str,
    kind: str,
    block: int,
    signal: TeacherSignal,
    train_set: MaskedSentences,
    hidden: int,
    device: torch.device,
) -> MaskedSentences | CachedSignals:
    """The training set of a block run (``kind``: block or merge): the sentences themselves, or with
    ``--cache_teacher`` the teacher's ``signal`` for them, read from the cache ``{kind}_{block}`` (built
    when missing or made for another teacher, data, seq_len or masking seed)."""
    if not flags.cache.cache_teacher:
        return train_set
    name = f"{kind}_{block}"
    key = {
        "teacher": teacher_name,
        "kind": name,
        "block": block,
        "seq_len": flags.data.seq_len,
        "masking_seed": flags.data.seed,
    }
    folder = Storage(flags.storage.storage_directory).cache(name)
    return open_cache(folder, key, train_set, hidden, device, signal, init_distributed(device))
