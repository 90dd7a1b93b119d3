"""Atomic checkpoints: a rolling ``latest.pt`` plus ``epoch_NNN.pt`` every few epochs.

A checkpoint is a dict of tensors and plain values (loadable with ``weights_only=True``):
``model`` (state dict of what is trained), ``optimizer``, ``epoch`` (last finished epoch),
``batches_done`` (batches of the next epoch already trained, for a run stopped mid-epoch),
``step``, ``rng`` and ``identity`` (the flags that must match to resume: block, heads, teacher...).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from utils.errors import UserError
from utils.files import atomic_write, move_aside, remove_stale_temporaries
from utils.storage import LATEST

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"


def save_checkpoint(state: dict, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


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


def check_identity(state: dict, expected: dict, path: Path | str) -> None:
    """Refuse a checkpoint made with other architecture/teacher flags, naming each difference.

    A key the checkpoint does not record (written before that flag existed) is not held against it.
    """
    saved = state.get("identity", {})
    differences = [
        f"{key}={saved[key]!r} (flags say {value!r})"
        for key, value in expected.items()
        if key in saved and saved[key] != value
    ]
    if differences:
        raise UserError(f"checkpoint {path} does not match the flags: {', '.join(differences)}")


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

    def __init__(self, path: str | Path, identity: dict, save_every: int, flags: dict | None = None):
        self.path = Path(path)
        self.identity = identity  # must match to resume
        self.save_every = save_every
        self.flags = flags or {}  # recorded for the reader, not checked
        self.writer = True  # False on every process but rank 0 under torchrun

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

    def save(self, state: dict) -> None:
        if not self.writer:
            return
        state = {**state, "identity": self.identity, "flags": self.flags}
        save_checkpoint(state, self.latest)
        epoch = state["epoch"]
        if state["batches_done"] == 0 and epoch > 0 and epoch % self.save_every == 0:
            save_checkpoint(state, self.path / f"epoch_{epoch:03d}.pt")

    def log_metrics(self, record: dict) -> None:
        if not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / METRICS, "a") as file:
            file.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict]:
        path = self.path / METRICS
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def truncate_metrics(self, last_epoch: int) -> None:
        """Drop records of epochs the checkpoint does not hold (a run killed after logging, before saving)."""
        if not self.writer:
            return
        kept = [record for record in self.read_metrics() if record["epoch"] <= last_epoch]
        atomic_write(self.path / METRICS, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in kept)))
