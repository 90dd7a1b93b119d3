"""Atomic checkpoints: a rolling ``latest.pt`` plus ``epoch_NNN.pt`` every few epochs and, for a block run,
``best.pt``: the checkpoint of its epoch of lowest validation loss, which the stages after it read.

A checkpoint is a dict of tensors and plain values (loadable with ``weights_only=True``):
``model`` (state dict of what is trained), ``optimizer``, ``epoch`` (last finished epoch),
``batches_done`` (batches of the next epoch already trained, for a run stopped mid-epoch),
``step``, ``rng``, ``identity`` (the flags that must match to resume: block, heads, teacher...),
``record`` (the metrics record of the last epoch, so ``metrics.jsonl`` can be reconciled with it) and,
for a run stopped mid-epoch, ``epoch_progress`` (loss, batches, sentences and seconds so far).
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from utils.device import auto_as_recorded
from utils.errors import Diverged, UserError
from utils.files import RunLock, atomic_write, ensure_writable, move_aside, remove_stale_temporaries
from utils.storage import BEST, LATEST, run_output

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
# continuable flags that only say how long a run trains: a finished run rerun with other values goes on or is done
RUN_LENGTH = ("epochs", "max_steps", "stop_patience", "stop_min_delta")


def save_checkpoint(state: dict, path: Path) -> None:
    """Write atomically; a full disk is a one-line error naming the path and the space needed."""
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except (OSError, RuntimeError) as error:  # torch's zip writer reports ENOSPC as a RuntimeError
        needed = sum(t.numel() * t.element_size() for t in _tensors(state))
        free = shutil.disk_usage(path.parent).free
        if getattr(error, "errno", None) != errno.ENOSPC and free >= needed:
            raise
        raise UserError(
            f"cannot write checkpoint {path}: the disk is full ({free / 1e6:.1f} MB free, about {needed / 1e6:.1f} MB "
            "needed); free some space and rerun: the run resumes from its last checkpoint"
        ) from None


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def load_checkpoint(path: str | Path, flag: str = "checkpoint") -> dict:
    """Load a checkpoint on the CPU; missing or unreadable files raise a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle errors, ...: all mean the same to the user
        raise UserError(
            f"{flag} {path} is corrupt or truncated ({type(error).__name__}); delete it or pass --no_resume"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{flag} {path} is not a sitra checkpoint (no 'model' entry)")
    return state


def kept_epoch(folder: Path) -> int | None:
    """The epoch a block run gives the stages after it (its :func:`~utils.storage.run_output`); None before its
    first checkpoint."""
    output = run_output(Path(folder))
    return load_checkpoint(output)["epoch"] if output.exists() else None


def check_identity(state: dict, expected: dict, path: Path | str) -> None:
    """Refuse a checkpoint made with other identity flags (:mod:`utils.identity`), naming each difference.

    A key its identity does not record (written before sitra recorded that flag) is read from the flags the
    checkpoint also records; only a key recorded in neither is not held against it. A precision recorded as
    ``auto`` (before a run resolved it once, at its start) is what auto meant then where the checkpoint was made
    (:func:`utils.device.auto_as_recorded`: bf16 where its RNG state holds a GPU's, fp32 on a CPU), so such a run
    resumes only in the precision it trained in, wherever it resumes (a CPU run of then is refused where auto is
    bf16 now; ``--precision fp32`` resumes it).
    """
    saved = {**state.get("flags", {}), **state.get("identity", {})}
    if saved.get("precision") == "auto":  # named as such when it differs: "precision='auto, i.e. fp32' (... 'bf16')"
        was = auto_as_recorded(state)
        saved["precision"] = was if expected.get("precision") == was else f"auto, i.e. {was}"
    for name, fingerprint in (("teacher", "teacher_fingerprint"), ("init", "init_fingerprint"),
                              ("model", "model_fingerprint")):  # fmt: skip
        if saved.get(fingerprint) and saved.get(fingerprint) == expected.get(fingerprint):
            saved.pop(name, None)  # the same weights at another path are the same model
    differences = [
        f"{key}={saved[key]!r} (flags say {value!r})"
        for key, value in expected.items()
        if key in saved and _comparable(saved[key]) != _comparable(value)
    ]
    if differences:
        raise UserError(f"checkpoint {path} does not match the flags: {', '.join(differences)}")


def _comparable(value):
    """Lists and tuples compare equal (a checkpoint stores a tuple flag as a list)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def check_finite(state: dict, path: Path | str) -> None:
    """A checkpoint holds only finite values: refuse to write one that does not (a diverged run)."""
    bad = [
        name for name, tensor in state["model"].items() if tensor.is_floating_point() and not tensor.isfinite().all()
    ]
    if bad:
        raise Diverged(
            f"non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); {path} not written"
        )


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunDirectory:
    """The folder of one run: checkpoints and the per-epoch metrics file."""

    def __init__(
        self,
        path: str | Path,
        identity: dict,
        save_every: int,
        flags: dict | None = None,
        continuable: dict | None = None,
    ):
        self.path = Path(path)
        self.identity = identity  # must match to resume
        self.save_every = save_every
        self.flags = flags or {}  # recorded for the reader (and for identities of older checkpoints)
        self.continuable = continuable or {}  # may change when the run goes on; a finished run must match them
        self.writer = True  # False on every process but rank 0 under torchrun
        self.lock: RunLock | None = None  # held from prepare() until the process ends

    @property
    def latest(self) -> Path:
        return self.path / LATEST

    def resume_state(self, no_resume: bool) -> dict | None:
        """The latest checkpoint to continue from, validated; None to start fresh.

        With ``no_resume`` an existing run folder (with or without a checkpoint) is moved aside under a
        unique ``{run}.old-{timestamp}[-N]`` name, never deleted or overwritten.
        """
        if no_resume and self.path.exists():
            aside = move_aside(self.path)
            log.info("--no_resume: moved the previous run to %s", aside)
            return None
        for stale in remove_stale_temporaries(self.path):
            log.info("removed %s, left by a killed write", stale)
        if not self.latest.exists():
            return None
        state = load_checkpoint(self.latest)
        check_identity(state, self.identity, self.latest)
        return state

    def prepare(
        self,
        epochs: int,
        max_steps: int | None,
        no_resume: bool,
        is_main: bool = True,
        stopped_early: Callable[[dict], bool] | None = None,
    ) -> bool:
        """Checks before anything is loaded: no other process holds this run, a checkpoint to resume was
        made with the same flags, the storage can be written. Returns True when the run is already
        finished (rerun with the same flags; or ``stopped_early(checkpoint)``, its stopping rule ended it): then
        nothing is written, even on read-only storage."""
        if not is_main:
            self.writer = False
            return False
        if not no_resume and self.latest.exists():
            state = load_checkpoint(self.latest)
            check_identity(state, self.identity, self.latest)
            ended = state["epoch"] >= epochs or (stopped_early is not None and stopped_early(state))
            done = state["batches_done"] == 0 and ended
            if done or (max_steps is not None and state["step"] >= max_steps):
                self._check_continuable(state)
                log.info("%s is finished (epoch %d, step %d): nothing to do", self.path, state["epoch"], state["step"])
                return True
        ensure_writable(self.path.parent)
        self.lock = RunLock(self.path)
        return False

    def _check_continuable(self, state: dict) -> None:
        """A finished run rerun with another learning rate (or another continuable flag that is not its length)
        is another experiment: refuse it rather than report the finished one."""
        saved = state.get("flags", {})
        differences = [
            f"{key}={saved[key]!r} (flags say {value!r})"
            for key, value in self.continuable.items()
            if key in saved and key not in RUN_LENGTH and saved[key] != value
        ]
        if differences:
            raise UserError(
                f"{self.path} is finished with {', '.join(differences)}: to continue it with the new values raise "
                "--epochs (or --max_steps); to train it anew pass --no_resume (the finished run is moved aside)"
            )

    def save(self, state: dict) -> None:
        """The kept ``epoch_NNN.pt`` first, then ``latest.pt``: a kill between the two leaves the previous
        latest, and the resumed run writes both again."""
        if not self.writer:
            return
        check_finite(state, self.latest)
        state = self._stamped(state)
        epoch = state["epoch"]
        if state["batches_done"] == 0 and epoch > 0 and epoch % self.save_every == 0:
            save_checkpoint(state, self.path / f"epoch_{epoch:03d}.pt")
        save_checkpoint(state, self.latest)

    def save_best(self, state: dict) -> None:
        """``best.pt``: the checkpoint of the epoch whose validation loss is the lowest so far."""
        if not self.writer:
            return
        save_checkpoint(self._stamped(state), self.path / BEST)

    def _stamped(self, state: dict) -> dict:
        """The state with this run's identity and flags, which a resume or a later stage checks it against."""
        return {**state, "identity": self.identity, "flags": self.flags}

    def log_metrics(self, record: dict) -> None:
        if not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / METRICS, "a") as file:
            file.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict]:
        path = self.path / METRICS
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def reconcile_metrics(self, state: dict | None) -> None:
        """Make ``metrics.jsonl`` agree with the checkpoint: the records of the steps the checkpoint holds (every
        epoch's, and those of partial epochs ended by ``--max_steps``), none after it (a run killed after
        logging, before saving), and the checkpoint's own last record when a kill came between saving and
        logging. ``None``: a fresh run, no records."""
        if not self.writer:
            return
        last_step = -1 if state is None else state["step"]
        by_position = {(r["epoch"], r["step"]): r for r in self.read_metrics() if r["step"] <= last_step}
        saved = (state or {}).get("record")
        if saved is not None and saved["step"] <= last_step:
            by_position.setdefault((saved["epoch"], saved["step"]), saved)
        kept = [by_position[position] for position in sorted(by_position)]
        if kept or (self.path / METRICS).exists():
            atomic_write(self.path / METRICS, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in kept)))
