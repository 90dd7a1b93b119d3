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

The folder checks itself. ``key.json`` (the header, written last) records under ``files`` every file's shape,
dtype, byte size and SHA-256, hashed while it is written and verified by reading it back before the folder
is swapped in. Opening it (:func:`check_files`: a ``stat`` per file, no reading) refuses a missing or resized
file in one line naming it and the rebuild; :func:`verify_store` (``build_teacher_store.py --verify``) re-hashes
everything on demand. A training step whose loss or gradient is not finite first re-reads its batch's stored
rows (:func:`check_stored_batch`): non-finite values there are a damaged store, not a divergence. Folders
built before checksums were recorded still open, size-checked, with a one-line warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import weakref
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
from utils.flops import FlopRate, add_to_stage
from utils.signals import STORED_INPUT, STORED_TARGET, Signal, TeacherSignal
from utils.storage import Storage
from utils.teacher import Teacher

log = logging.getLogger(__name__)

CACHE_EPOCH = 1  # the training masks every cached sentence keeps
KEY_FILE = "key.json"
FILES = "files"  # the header's record of every file: shape, dtype, bytes, sha256
OFFSETS = "offsets.npy"
SENTENCE = "sentence"  # an item's index, kept by collate to re-check a batch
HASH_CHUNK = 1 << 24


def data_fingerprint(sentences: MaskedSentences) -> str:
    digest = hashlib.sha1()
    for ids in sentences.input_ids:
        digest.update(np.asarray(ids, dtype=np.int32).tobytes())
    return digest.hexdigest()


class CachedSignals(torch.utils.data.Dataset):
    """Training items ``{STORED_INPUT: [n, H], STORED_TARGET: [n, H]}`` (fp16), read from the cache: a
    dataset of (input, target) that :class:`utils.signals.TeacherSignal` reads."""

    def __init__(self, folder: Path, hidden: int, input_name: str = "input", target_name: str = "target"):
        self.folder = folder
        self.offsets = check_files(folder, [input_name, target_name], hidden)
        tokens = int(self.offsets[-1])
        self.paths = [folder / f"{name}.f16" for name in (input_name, target_name)]
        self.inputs, self.targets = (
            np.memmap(path, dtype=np.float16, mode="r", shape=(tokens, hidden)) for path in self.paths
        )

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
            SENTENCE: index,
        }

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        _LAST_BATCH[:] = [weakref.ref(self), [item[SENTENCE] for item in items]]  # for check_stored_batch
        return collate_cached(items)

    def check_finite(self, sentences: list[int]) -> None:
        """A damaged-store error naming the file and sentences when any of ``sentences`` holds a non-finite
        value (re-read from the store: 2 x [tokens, H] per sentence)."""
        for path, array in zip(self.paths, (self.inputs, self.targets), strict=True):
            bad = sorted(i for i in set(sentences) if _non_finite(array[self.offsets[i] : self.offsets[i + 1]]).any())
            if bad:
                rows = ", ".join(f"{self.offsets[i]}..{self.offsets[i + 1] - 1}" for i in bad[:5])
                sentences_named = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                raise damaged(
                    self.folder,
                    path.name,
                    f"non-finite values in sentences {sentences_named} (rows {rows}); the teacher's activations "
                    "were finite when stored, so this is not a divergence and --lr is not at fault",
                )


_LAST_BATCH: list = []  # [weakref to the CachedSignals, its sentences]: the last batch a store gave training


def check_stored_batch() -> None:
    """Called before a non-finite loss or gradient is reported as divergence (:mod:`utils.training`): when the
    step's batch was read from a store or cache (the loader runs in the main process, so the last batch read is
    the step's), its rows are re-read and a non-finite value stops the run as a damaged store. Costs nothing
    until a step goes non-finite."""
    if _LAST_BATCH and (dataset := _LAST_BATCH[0]()) is not None:
        dataset.check_finite(_LAST_BATCH[1])


def _non_finite(values: np.ndarray) -> np.ndarray:
    """Per element of an fp16 array: inf or NaN (all exponent bits set), by integer ops (fp16 math in numpy is
    slow)."""
    return (values.view(np.uint16) & 0x7C00) == 0x7C00


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
    """The key ``folder`` was built for (its header without the file records)."""
    header = _header(folder)
    return None if header is None else {name: value for name, value in header.items() if name != FILES}


def _header(folder: Path) -> dict | None:
    try:
        header = json.loads((folder / KEY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) else None


def damaged(folder: Path, name: str, problem: str) -> UserError:
    """The one error line of a damaged store or cache: the file, what is wrong, how to rebuild it."""
    if folder.name.startswith("store_"):
        what, rerun = "teacher store", "rerun build_teacher_store.py (or the --teacher_store run) with the same flags"
    else:
        what, rerun = "teacher cache", "rerun with the same flags (--cache_teacher)"
    return UserError(
        f"{folder / name}: {problem}: the {what} {folder} is damaged; remove it (rm -r {folder}) and {rerun} to "
        "rebuild it"
    )


_WARNED_UNVERIFIABLE: set[Path] = set()


def check_files(folder: Path, names: list[str], hidden: int) -> np.ndarray:
    """Cheap, on every opening (a ``stat`` per file, no array read): ``offsets.npy`` and each array ``names``
    (``{name}.f16``) exist with the size the header records, and each shape is [tokens of offsets.npy, ``hidden``]
    fp16. Returns the offsets. A folder whose header predates the file records (no checksums) is checked against
    the sizes its offsets imply and opens with a one-line warning that it cannot be verified."""
    files = (_header(folder) or {}).get(FILES)
    if files is not None:
        _check_size(folder, OFFSETS, files.get(OFFSETS))
    try:
        offsets = np.load(folder / OFFSETS)
    except (OSError, ValueError, EOFError) as error:
        raise damaged(folder, OFFSETS, f"unreadable ({str(error).splitlines()[0]})") from None
    if offsets.ndim != 1 or len(offsets) < 1:
        raise damaged(folder, OFFSETS, f"shape {list(offsets.shape)}, expected [sentences + 1]")
    expected = {"shape": [int(offsets[-1]), hidden], "dtype": "float16"}
    if files is None:
        if folder not in _WARNED_UNVERIFIABLE:
            _WARNED_UNVERIFIABLE.add(folder)
            log.warning(
                "%s was built before stores recorded checksums: its file sizes are checked, its contents cannot be "
                "verified (rm -r it and rerun to rebuild it with checksums)",
                folder,
            )
        files = {f"{name}.f16": {**expected, "bytes": _nbytes(expected)} for name in names}
    elif files[OFFSETS]["shape"] != list(offsets.shape):
        raise damaged(folder, OFFSETS, f"shape {list(offsets.shape)}, the header records {files[OFFSETS]['shape']}")
    for name in names:
        entry = files.get(f"{name}.f16")
        if entry is None:
            raise damaged(folder, f"{name}.f16", "not in the header")
        if {key: entry[key] for key in expected} != expected or entry["bytes"] != _nbytes(entry):
            raise damaged(
                folder,
                f"{name}.f16",
                f"the header records {entry['shape']} {entry['dtype']} in {entry['bytes']} bytes, "
                f"not {expected['shape']} float16",
            )
        _check_size(folder, f"{name}.f16", entry)
    return offsets


def _nbytes(entry: dict) -> int:
    return int(np.prod(entry["shape"], dtype=np.int64)) * np.dtype(entry["dtype"]).itemsize


def store_bytes(tokens: int, hidden: int, arrays: int) -> int:
    """The disk a store or cache of ``arrays`` fp16 arrays [tokens, hidden] takes (a study's bill, its build)."""
    return arrays * _nbytes({"shape": [tokens, hidden], "dtype": "float16"})


def _check_size(folder: Path, name: str, entry: dict | None) -> None:
    if entry is None:
        raise damaged(folder, name, "not in the header")
    try:
        size = (folder / name).stat().st_size
    except FileNotFoundError:
        raise damaged(folder, name, "missing") from None
    if size != entry["bytes"]:
        raise damaged(folder, name, f"{size} bytes, the header records {entry['bytes']}")


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in 16 MiB chunks (streaming: any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _first_mismatch(folder: Path, files: dict) -> tuple[str, str] | None:
    """The first file of ``files`` whose size or SHA-256 differs from its record: (name, what differs)."""
    for name, entry in files.items():
        size = (folder / name).stat().st_size if (folder / name).exists() else None
        if size != entry["bytes"]:
            return name, "missing" if size is None else f"{size} bytes, the header records {entry['bytes']}"
        if file_digest(folder / name) != entry["sha256"]:
            return name, "its content differs from the SHA-256 recorded when it was built"
    return None


def verify_store(folder: Path) -> dict:
    """Full verification on demand (``build_teacher_store.py --verify``): re-read every file of ``folder`` and
    compare it with the header's SHA-256 (a sequential read of the whole store). Returns files, bytes and seconds;
    raises the damaged-store error naming the first file that differs."""
    folder = Path(folder)
    header = _header(folder)
    if header is None:
        raise UserError(f"{folder}: no {KEY_FILE}: not a built teacher store or cache")
    files = header.get(FILES)
    if files is None:
        raise UserError(
            f"{folder} was built before stores recorded checksums, so it cannot be verified; to verify it, remove it "
            f"(rm -r {folder}) and rerun to rebuild it with checksums"
        )
    started = time.perf_counter()
    mismatch = _first_mismatch(folder, files)
    if mismatch is not None:
        raise damaged(folder, *mismatch)
    summary = {
        "files": len(files),
        "bytes": sum(entry["bytes"] for entry in files.values()),
        "seconds": time.perf_counter() - started,
    }
    log.info("%s: verified %d files, %.2f GB, in %.1f s (SHA-256)", folder, *summary.values())
    return summary


@torch.no_grad()
def _build(folder, key, train_set, arrays, hidden, device, compute, batch_size) -> None:
    """One pass over ``train_set`` (corpus order, epoch-1 masks); ``compute(batch)`` gives each of ``arrays``
    [B, T, H]; real tokens are packed into fp16 memory maps [tokens, H], then the folder is swapped in."""
    lengths = np.array(train_set.lengths())
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = int(offsets[-1])
    size = store_bytes(tokens, hidden, len(arrays))
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
        digests = {name: hashlib.sha256() for name in arrays}  # each file is written front to back: hashed as written
        train_set.set_epoch(CACHE_EPOCH)
        loader = make_loader(train_set, sequential_batches(len(train_set), batch_size))  # corpus order, epoch-1 masks
        index, rate, flops = 0, FlopRate(), 0.0  # and the FLOPs of the teacher's forward
        for batch in tqdm(loader, desc=f"teacher pass ({folder.name})"):
            with rate.measure(batch, index == 0):
                values = compute(to_device(batch, device))
            flops += rate.charge(batch)
            rows = batch["attention_mask"].sum(1).tolist()
            start, stop = offsets[index], offsets[index + len(rows)]
            for name, array in maps.items():
                packed = torch.cat([values[name][row, :length] for row, length in enumerate(rows)])
                packed = packed.float().cpu().numpy().astype(np.float16)
                if _non_finite(packed).any():
                    raise UserError(
                        f"the teacher's {name} is not finite in fp16 (overflow?) in sentences {index}..."
                        f"{index + len(rows) - 1}: the store cannot hold it"
                    )
                array[start:stop] = packed
                digests[name].update(packed.data)
            index += len(rows)
        for array in maps.values():
            array.flush()
        add_to_stage(folder.name, CACHE_EPOCH, flops, 0.0)  # its one pass: the teacher forward over the sentences
        np.save(tmp / OFFSETS, offsets)
        shape = {"shape": [tokens, hidden], "dtype": "float16"}
        shape["bytes"] = _nbytes(shape)
        files = {f"{name}.f16": {**shape, "sha256": digests[name].hexdigest()} for name in arrays}
        files[OFFSETS] = {
            "shape": list(offsets.shape),
            "dtype": str(offsets.dtype),
            "bytes": (tmp / OFFSETS).stat().st_size,
            "sha256": file_digest(tmp / OFFSETS),
        }
        started = time.perf_counter()
        mismatch = _first_mismatch(tmp, files)  # read back once: the disk holds what the teacher computed
        if mismatch is not None:
            raise UserError(
                f"{folder}: {mismatch[0]} reads back wrong after writing ({mismatch[1]}); disk full or failing?"
            )
        log.info(
            "verified %s after writing: %.2f GB in %.1f s (SHA-256)", folder, size / 1e9, time.perf_counter() - started
        )
        header = {**key, FILES: files}  # written last: a folder without it is rebuilt
        (tmp / KEY_FILE).write_text(json.dumps(header, indent=2))

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
    check_files(folder, store_arrays(num_layers, layers), teacher.model.config.hidden_size)
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
