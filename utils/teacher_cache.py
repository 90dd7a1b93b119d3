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
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from models import SimplifiedBert
from utils.args import Flags
from utils.data import MaskedSentences, make_loader, sequential_batches
from utils.device import to_device
from utils.distributed import Distributed, init_distributed
from utils.errors import UserError
from utils.files import atomic_write_dir
from utils.signals import STORED_INPUT, STORED_TARGET, Signal, TeacherSignal
from utils.storage import Storage
from utils.teacher import Teacher

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

    def __init__(self, folder: Path, hidden: int, input_name: str = "input", target_name: str = "target"):
        self.offsets = np.load(folder / "offsets.npy")
        tokens = int(self.offsets[-1])
        self.inputs = np.memmap(folder / f"{input_name}.f16", dtype=np.float16, mode="r", shape=(tokens, hidden))
        self.targets = np.memmap(folder / f"{target_name}.f16", dtype=np.float16, mode="r", shape=(tokens, hidden))

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

    def compute(batch: dict) -> dict[str, torch.Tensor]:
        return dict(zip(("input", "target"), signal(batch), strict=True))

    if world.is_main:
        build_once(folder, key, train_set, ["input", "target"], hidden, device, compute, batch_size)
    world.barrier()
    return CachedSignals(folder, hidden)


def build_once(
    folder: Path, key: dict, train_set, arrays: list[str], hidden: int, device, compute, batch_size: int
) -> None:
    """Build ``folder`` for ``key`` unless it holds it already; concurrent processes (SLURM array tasks)
    wait on a file lock and then find it built, so it is built once."""
    if _saved_key(folder) == key:
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if _saved_key(folder) != key:
            _build(folder, key, train_set, arrays, hidden, device, compute, batch_size)


def _saved_key(folder: Path) -> dict | None:
    try:
        return json.loads((folder / KEY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


@torch.no_grad()
def _build(folder, key, train_set, arrays, hidden, device, compute, batch_size) -> None:
    """One pass over ``train_set`` (corpus order, epoch-1 masks); ``compute(batch)`` gives each of ``arrays``
    [B, T, H]; real tokens are packed into fp16 memory maps [tokens, H], then the folder is swapped in."""
    lengths = np.array(train_set.lengths())
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = int(offsets[-1])
    size = len(arrays) * tokens * hidden * 2
    free = shutil.disk_usage(folder.parent).free
    log.info(
        "building the teacher cache %s: %d sentences, %d tokens, %d arrays, %.2f GB (fp16)",
        folder,
        len(lengths),
        tokens,
        len(arrays),
        size / 1e9,
    )
    if size > free:
        raise UserError(f"{folder}: needs {size / 1e9:.2f} GB, only {free / 1e9:.2f} GB free there")

    def write(tmp: Path) -> None:  # the new folder, swapped in whole once key.json is written
        tmp.mkdir()
        maps = {
            name: np.memmap(tmp / f"{name}.f16", dtype=np.float16, mode="w+", shape=(tokens, hidden)) for name in arrays
        }
        train_set.set_epoch(CACHE_EPOCH)
        loader = make_loader(train_set, sequential_batches(len(train_set), batch_size))  # corpus order, epoch-1 masks
        index = 0
        for batch in tqdm(loader, desc=f"teacher pass ({folder.name})"):
            values = compute(to_device(batch, device))
            for row, length in enumerate(batch["attention_mask"].sum(1).tolist()):
                start, stop = offsets[index], offsets[index + 1]
                for name, array in maps.items():
                    array[start:stop] = values[name][row, :length].float().cpu().numpy()
                index += 1
        for array in maps.values():
            array.flush()
        np.save(tmp / "offsets.npy", offsets)
        (tmp / KEY_FILE).write_text(json.dumps(key, indent=2))  # written last: a folder without it is rebuilt

    atomic_write_dir(folder, write)


def store_arrays(num_layers: int, layers: list[int]) -> list[str]:
    """What a store for ``layers`` holds: the hidden state entering each of them (``hidden_{l}``; ``hidden_{L}``
    is the last layer's output) and each one's attention output before residual + LayerNorm."""
    return [f"hidden_{layer}" for layer in sorted({*layers, num_layers})] + [
        f"attention_{layer}" for layer in sorted(layers)
    ]


def signal_arrays(kind: str, block: int) -> tuple[str, str]:
    """The arrays of :func:`teacher_pass` a ``kind`` run of ``block`` learns from: its input (the hidden state
    entering layer ``block``) and target (a block: that layer's attention output; a merge: the state entering
    layer ``block + 2``)."""
    return f"hidden_{block}", f"attention_{block}" if kind == "block" else f"hidden_{block + 2}"


@torch.no_grad()
def teacher_pass(model: SimplifiedBert, layers: set[int], batch: dict) -> dict[str, torch.Tensor]:
    """One forward of the teacher recording the arrays of :func:`store_arrays`, each [B, T, H]."""
    mask = batch["attention_mask"].bool()
    hidden = model.embeddings(input_ids=batch["input_ids"])
    recorded = {}
    for index, layer in enumerate(model.layers):
        attention_output = layer.attention(hidden, mask)[0]
        if index in layers:
            recorded[f"hidden_{index}"], recorded[f"attention_{index}"] = hidden, attention_output
        hidden = layer.finish(hidden, attention_output)
    recorded[f"hidden_{len(model.layers)}"] = hidden
    return recorded


def open_store(flags: Flags, teacher: Teacher, train_set: MaskedSentences, device: torch.device) -> Path:
    """The shared activation store of ``teacher`` on ``train_set`` (built first when missing): one teacher
    pass serves every block and merge run of any shape. Keyed by the teacher's name and weights, the data,
    seq_len, masking seed and layers; another key is another folder, never a reuse."""
    num_layers = len(teacher.model.layers)
    layers = sorted(set(flags.store.store_layers if flags.store.store_layers is not None else range(num_layers)))
    if not all(0 <= layer < num_layers for layer in layers):
        raise UserError(f"--store_layers {layers}: the teacher has layers 0..{num_layers - 1}")
    key = {
        "kind": "store",
        "teacher": teacher.name,
        "teacher_fingerprint": teacher.info.fingerprint,
        "data": data_fingerprint(train_set),
        "seq_len": flags.data.seq_len,
        "masking_seed": flags.data.seed,
        "masking_epoch": CACHE_EPOCH,
        "layers": layers,
    }
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    folder = Storage(flags.storage.storage_directory).cache(f"store_{digest}")
    if init_distributed(device).is_main:
        arrays = store_arrays(num_layers, layers)
        build_once(
            folder,
            key,
            train_set,
            arrays,
            teacher.model.config.hidden_size,
            device,
            lambda batch: teacher_pass(teacher.model, set(layers), batch),
            STORE_BATCH,
        )
    init_distributed(device).barrier()
    return folder


STORE_BATCH = 128


def teacher_training_set(
    flags: Flags,
    teacher: Teacher,
    kind: str,
    block: int,
    signal: TeacherSignal,
    train_set: MaskedSentences,
    device: torch.device,
) -> MaskedSentences | CachedSignals:
    """The training set of a block run (``kind``: block or merge): the sentences themselves; with
    ``--teacher_store`` the block's slice of the shared store (input of layer ``block``; target its attention
    output, or for a merge the input of layer ``block + 2``); with ``--cache_teacher`` this run's own cache
    ``{kind}_{block}`` of ``signal`` (built when missing or made for another teacher, data, seq_len or seed)."""
    hidden = teacher.model.config.hidden_size
    if flags.cache.teacher_store:
        folder = open_store(flags, teacher, train_set, device)
        source, target = signal_arrays(kind, block)
        if not all((folder / f"{name}.f16").exists() for name in (source, target)):
            raise UserError(f"--store_layers: the store lacks the input or target of {kind} {block}; include it")
        return CachedSignals(folder, hidden, source, target)
    if not flags.cache.cache_teacher:
        return train_set
    name = f"{kind}_{block}"
    key = {
        "teacher": teacher.name,
        "kind": name,
        "block": block,
        "seq_len": flags.data.seq_len,
        "masking_seed": flags.data.seed,
    }
    folder = Storage(flags.storage.storage_directory).cache(name)
    return open_cache(folder, key, train_set, hidden, device, signal, init_distributed(device))
