"""Where a run stands and how it starts or resumes: the position, the measurements of the epoch in progress, the
checkpoint's content, and restoring all of it (weights, optimizer, RNG, position) from the run's latest
checkpoint. :mod:`utils.training` reads as a loop because this lives here."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from models import FeedForward, MultiHeadAttention, TransformerLayer
from utils.checkpoint import RunDirectory, rng_state, set_rng_state
from utils.distributed import Distributed
from utils.errors import Diverged

log = logging.getLogger(__name__)

HYPERPARAMETERS = ("lr", "weight_decay", "betas")  # taken from the flags when a run resumes


@dataclass
class Position:
    """Where training stands: finished epochs, batches of the next epoch already trained, optimizer steps."""

    epoch: int = 0
    batches_done: int = 0
    step: int = 0


@dataclass
class EpochSummary:
    """What the passes over an epoch's batches measured, accumulated across an interruption."""

    loss_total: float = 0.0
    batches: int = 0
    sentences: int = 0
    seconds: float = 0.0
    flops: float = 0.0  # training FLOPs: forward and backward, teacher forwards included (utils.flops)
    shared_flops: float = 0.0  # of them, the teacher forward it shared with others in lockstep (charged to each)
    stopped: bool = False  # a preemption signal arrived

    def charge(self, flops: float, shared: bool = False) -> None:
        """Add ``flops`` trained; ``shared``: a teacher forward shared in lockstep (see utils.flops.stage_flops)."""
        self.flops += flops
        self.shared_flops += flops if shared else 0.0

    def record(self, epoch: int, position: Position, finished: bool) -> dict:
        record = {
            "epoch": epoch,
            "step": position.step,
            "train_loss": self.loss_total / max(self.batches, 1),
            "train_seconds": self.seconds,
            "train_flops": self.flops,
            "sentences_per_second": self.sentences / max(self.seconds, 1e-9),
        }
        if not finished:
            record["batches_done"] = position.batches_done  # a partial epoch, ended by --max_steps
        return record

    def progress(self) -> dict:
        return {
            "loss_total": self.loss_total,
            "batches": self.batches,
            "sentences": self.sentences,
            "seconds": self.seconds,
            "flops": self.flops,
            "shared_flops": self.shared_flops,
        }


@dataclass
class Member:
    """One objective being trained, with everything of its own: run folder, optimizer, the network the loss runs
    (its DDP wrapper under torchrun), position, the epoch's measurements and, when it shares the loop with others
    (:mod:`utils.lockstep`), its own random stream (dropout)."""

    objective: object  # utils.objectives.Objective
    run: RunDirectory
    optimizer: torch.optim.Optimizer
    network: nn.Module | None = None
    position: Position | None = None
    summary: EpochSummary | None = None
    rng: dict | None = None
    scaler: torch.amp.GradScaler | None = None
    losses: list[float] = field(default_factory=list)  # the validation loss after each finished epoch, epoch 0 first

    @property
    def loss_metric(self) -> str | None:
        """The name of the objective's validation loss (lower is better) in its evaluation, if it has one."""
        return getattr(self.objective, "validation_loss", None)


def plateaued(losses: list[float], patience: int | None, min_delta: float) -> bool:
    """The stopping rule of ``--stop_patience``: True when each of the last ``patience`` validation losses (one per
    finished epoch, epoch 0's before training first) failed to fall below ``(1 - min_delta)`` x the best before it.
    Never with ``patience`` None or before ``patience`` epochs were trained."""
    if patience is None or len(losses) <= patience:
        return False
    return all(losses[k] >= min(losses[:k]) * (1 - min_delta) for k in range(len(losses) - patience, len(losses)))


def checkpoint_state(member: Member, record: dict | None = None, epoch_progress: EpochSummary | None = None) -> dict:
    """What a checkpoint holds (see :mod:`utils.checkpoint`)."""
    position, trainable = member.position, member.objective.trainable
    state = {
        "model": trainable.state_dict(),
        "optimizer": member.optimizer.state_dict(),
        "epoch": position.epoch,
        "batches_done": position.batches_done,
        "step": position.step,
        "rng": rng_state(),
        "validation_losses": member.losses,
    }
    if record is not None:
        state["record"] = record
    if epoch_progress is not None:
        state["epoch_progress"] = epoch_progress.progress()
    if isinstance(trainable, (MultiHeadAttention, TransformerLayer, FeedForward)):
        state["spec"] = trainable.spec  # what assembly rebuilds the module from
    return state


def save(member: Member, state: dict) -> None:
    """Checkpoint ``state``, an epoch's end or the start; a block run's state (it has a ``spec``) is also kept as
    ``best.pt`` when its validation loss, the last of ``member.losses``, is the lowest so far (ties: the later).
    best.pt is written before latest.pt: a kill between the two makes the rerun train that epoch again."""
    losses = member.losses
    if "spec" in state and state["batches_done"] == 0 and losses and losses[-1] <= min(losses):
        member.run.save_best(state)
    member.run.save(state)


def format_record(record: dict) -> str:
    return " ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in record.items()
    )


def start_or_resume(member: Member, valid_loader, no_resume: bool, world: Distributed) -> None:
    """Set ``member.position`` and ``member.summary``. A fresh run is evaluated (epoch 0) and checkpointed; a
    resumed one restores weights, optimizer, RNG, position and the measurements of a partial epoch, and
    reconciles ``metrics.jsonl`` with the checkpoint. Learning rate, weight decay and betas come from the flags:
    when they differ from the checkpoint's, the new values are applied and the change is logged."""
    objective, optimizer, run = member.objective, member.optimizer, member.run
    state = _resume_state(run, no_resume, world)
    run.reconcile_metrics(state)
    if state is None:
        member.position, member.summary = Position(), EpochSummary()
        objective.trainable.eval()
        record = {"epoch": 0, "step": 0, **objective.evaluate(valid_loader)}
        log.info("epoch 0 (before training): %s", format_record(record))
        member.losses = [record[member.loss_metric]] if member.loss_metric else []
        save(member, checkpoint_state(member, record=record))
        run.log_metrics(record)
        return
    objective.trainable.load_state_dict(state["model"])
    wanted = [{key: group[key] for key in HYPERPARAMETERS if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for index, (group, values) in enumerate(zip(optimizer.param_groups, wanted, strict=True)):
        for key, value in values.items():
            if group[key] != value:
                log.warning(
                    "parameter group %d: %s changed from %s (checkpoint) to %s (flags)", index, key, group[key], value
                )
                group[key] = value
    member.position = Position(state["epoch"], state["batches_done"], state["step"])
    member.losses = list(state.get("validation_losses", []))  # none in checkpoints older than the stopping rule
    set_rng_state(state["rng"])
    member.rng = state["rng"] if member.position.batches_done else None  # a mid-epoch stream goes on from here
    progress = state.get("epoch_progress") if member.position.batches_done else None
    member.summary = EpochSummary(**progress) if progress else EpochSummary()
    position = member.position
    log.info(
        "resuming %s at epoch %d (batch %d), step %d",
        run.latest,
        position.epoch + 1,
        position.batches_done,
        position.step,
    )


def _resume_state(run: RunDirectory, no_resume: bool, world: Distributed) -> dict | None:
    """Rank 0 decides (and moves an old run aside with --no_resume); the others then read the same
    checkpoint, before rank 0 writes anything new."""
    state = run.resume_state(no_resume) if world.is_main else None
    world.barrier()
    if not world.is_main:
        state = run.resume_state(False)
    world.barrier()
    return state


def finished_training(member: Member, training) -> bool:
    """Whether ``member`` has trained all it will: its epochs or steps, or its stopping rule ended it."""
    position = member.position
    if position.epoch >= training.epochs or (training.max_steps is not None and position.step >= training.max_steps):
        return True
    return position.batches_done == 0 and stopped_early(member, training)


def stopped_early(member: Member, training) -> bool:
    """Whether the stopping rule (--stop_patience, --stop_min_delta) ends ``member`` where it stands."""
    return plateaued(member.losses, training.stop_patience, training.stop_min_delta)


def stop_if_diverged(member: Member, loss: torch.Tensor) -> None:
    """Before the step is applied: a non-finite loss, or a non-finite gradient norm, stops the run with one
    error line, so nothing of the bad step reaches the weights or a checkpoint (the last checkpoint stays the
    latest; a rerun with a smaller --lr resumes from it). With fp16 loss scaling a non-finite gradient is the
    scaler's to skip, on purpose, and is not divergence."""
    parameters = [p for group in member.optimizer.param_groups for p in group["params"] if p.grad is not None]
    finite_loss = bool(torch.isfinite(loss.detach()).all())
    finite_gradient = member.scaler.is_enabled() or bool(
        torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in parameters])).all()
    )
    if finite_loss and finite_gradient:
        return
    from utils.teacher_cache import check_stored_batch  # non-finite stored teacher values: a damaged store, not --lr

    check_stored_batch()
    what = "loss" if not finite_loss else "gradient norm"
    position = member.position
    learning_rates = sorted({group["lr"] for group in member.optimizer.param_groups})
    raise Diverged(
        f"{member.run.path.name} diverged: non-finite {what} at epoch {position.epoch + 1}, step {position.step + 1} "
        f"(lr {', '.join(f'{lr:g}' for lr in learning_rates)}); nothing of this step was saved, "
        f"{member.run.latest} is the last finite checkpoint: rerun with a smaller --lr to resume from it"
    )
