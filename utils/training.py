"""The one training loop every script uses: epochs of an :class:`Objective`, evaluation, checkpoints, resume."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from models import MultiHeadAttention, TransformerLayer
from utils.args import TrainingArguments
from utils.checkpoint import RunDirectory, rng_state, set_rng_state
from utils.data import epoch_batches, make_loader
from utils.device import autocast, to_device
from utils.distributed import Distributed, init_distributed
from utils.preemption import EXIT_REQUEUE, PREEMPTION

log = logging.getLogger(__name__)


class Objective(Protocol):
    """What a script trains.

    ``trainable`` holds every parameter the optimizer updates (and only it is checkpointed);
    ``network`` is the module whose forward the loss runs; ``loss(batch, network)`` runs ``network``
    (``self.network``, or its DistributedDataParallel wrapper under torchrun) on a batch on the device
    and returns ``(sum, count)``: the loss is ``sum / count``, kept apart so that processes with
    different token counts average exactly like one process; ``evaluate`` maps the validation loader
    to named metrics.
    """

    trainable: nn.Module
    network: nn.Module

    def loss(self, batch: dict[str, torch.Tensor], network: nn.Module) -> tuple[torch.Tensor, int]: ...

    def evaluate(self, loader) -> dict[str, float]: ...


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the dropout randomness of one epoch, so a resumed epoch replays exactly."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def make_optimizer(module: nn.Module, training: TrainingArguments) -> torch.optim.Optimizer:
    parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
    betas = (training.adam_beta1, training.adam_beta2)
    return torch.optim.AdamW(parameters, lr=training.lr, betas=betas, weight_decay=training.adam_weight_decay)


@dataclass
class Position:
    """Where training stands: finished epochs, batches of the next epoch already trained, optimizer steps."""

    epoch: int = 0
    batches_done: int = 0
    step: int = 0


def fit(
    objective: Objective,
    train_set,
    valid_loader,
    training: TrainingArguments,
    run: RunDirectory,
    device: torch.device,
    seed: int,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[dict]:
    """Train ``objective.trainable`` for ``training.epochs`` epochs (or ``training.max_steps`` steps).

    Epoch 0 is the evaluation before training. After every epoch: evaluate, write the rolling checkpoint
    (and a kept one every ``save_checkpoint_every``), append a JSON line to ``metrics.jsonl``.
    Resumes from the run's latest checkpoint unless ``training.no_resume``. On SIGTERM/SIGUSR1/SIGINT
    (see :mod:`utils.preemption`) it finishes the step, checkpoints its position in the epoch and exits
    with :data:`EXIT_REQUEUE`. ``seed`` fixes the order of sentences and the dropout of every epoch.
    Returns all metric records.
    """
    world = init_distributed(device)
    run.writer = world.is_main
    optimizer = optimizer or make_optimizer(objective.trainable, training)
    with PREEMPTION.deferred():
        _exit_if_signalled(None)
        position, summary = _start_or_resume(objective, optimizer, valid_loader, run, training.no_resume, world)
        _exit_if_signalled(position)
        network = objective.network
        if world.enabled:  # the wrapper only runs the loss; evaluation and checkpoints use the module itself
            device_ids = [device.index] if device.type == "cuda" else None
            network = nn.parallel.DistributedDataParallel(network, device_ids=device_ids)
        scaler = torch.amp.GradScaler(device.type, enabled=training.precision == "fp16")
        lengths = train_set.lengths() if training.group_by_length else None  # for batches of similar length
        while not _done(position, training):
            current = position.epoch + 1
            train_set.set_epoch(current)
            batches = epoch_batches(
                len(train_set), training.batch_size, seed, current, True, world.rank, world.world_size, lengths=lengths
            )
            if position.batches_done == 0:
                torch.manual_seed(epoch_seed(seed, current))  # else the checkpoint restored the RNG mid-epoch
            _train_epoch(
                objective, network, optimizer, scaler, train_set, batches, position, summary, training, device, world
            )
            finished = position.batches_done == len(batches)
            if summary.stopped and not finished:  # checkpoint the position in the epoch, no evaluation: time is short
                run.save(_state(objective, optimizer, position, epoch_progress=summary))
                log.warning(
                    "preempted at epoch %d, batch %d (step %d); checkpoint written, exiting (exit %d)",
                    current,
                    position.batches_done,
                    position.step,
                    EXIT_REQUEUE,
                )
                raise SystemExit(EXIT_REQUEUE)
            record = summary.record(current, position, finished)
            objective.trainable.eval()
            record.update(objective.evaluate(valid_loader))
            log.info("epoch %d: %s", current, _format(record))
            if finished:
                position.epoch, position.batches_done = current, 0
            run.save(_state(objective, optimizer, position, record=record))
            run.log_metrics(record)
            if summary.stopped:
                raise SystemExit(EXIT_REQUEUE)
            summary = EpochSummary()
    return run.read_metrics()


def _done(position: Position, training: TrainingArguments) -> bool:
    return position.epoch >= training.epochs or (training.max_steps is not None and position.step >= training.max_steps)


def _exit_if_signalled(position: Position | None) -> None:
    """A signal that came before training started: exit for requeueing (after the first checkpoint, if any)."""
    if PREEMPTION.received is not None:
        where = "before the first checkpoint" if position is None else f"at step {position.step}, checkpoint written"
        log.warning("stopped by a signal %s; exiting (exit %d)", where, EXIT_REQUEUE)
        raise SystemExit(EXIT_REQUEUE)


def _start_or_resume(
    objective, optimizer, valid_loader, run: RunDirectory, no_resume: bool, world: Distributed
) -> tuple[Position, EpochSummary]:
    """A fresh run is evaluated (epoch 0) and checkpointed; a resumed one restores weights, optimizer, RNG,
    position and the measurements of a partial epoch, and reconciles ``metrics.jsonl`` with the checkpoint.
    Learning rate, weight decay and betas come from the flags: when they differ from the checkpoint's,
    the new values are applied and the change is logged."""
    state = _resume_state(run, no_resume, world)
    run.reconcile_metrics(state)
    if state is None:
        position = Position()
        objective.trainable.eval()
        record = {"epoch": 0, "step": 0, **objective.evaluate(valid_loader)}
        log.info("epoch 0 (before training): %s", _format(record))
        run.save(_state(objective, optimizer, position, record=record))
        run.log_metrics(record)
        return position, EpochSummary()
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
    position = Position(state["epoch"], state["batches_done"], state["step"])
    set_rng_state(state["rng"])
    progress = state.get("epoch_progress") if position.batches_done else None
    summary = EpochSummary(**progress) if progress else EpochSummary()
    log.info(
        "resuming %s at epoch %d (batch %d), step %d",
        run.latest,
        position.epoch + 1,
        position.batches_done,
        position.step,
    )
    return position, summary


HYPERPARAMETERS = ("lr", "weight_decay", "betas")


@dataclass
class EpochSummary:
    """What the passes over an epoch's batches measured, accumulated across an interruption."""

    loss_total: float = 0.0
    batches: int = 0
    sentences: int = 0
    seconds: float = 0.0
    stopped: bool = False  # a preemption signal arrived

    def record(self, epoch: int, position: Position, finished: bool) -> dict:
        record = {
            "epoch": epoch,
            "step": position.step,
            "train_loss": self.loss_total / max(self.batches, 1),
            "train_seconds": self.seconds,
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
        }


def _train_epoch(
    objective,
    network,
    optimizer,
    scaler,
    train_set,
    batches,
    position: Position,
    summary: EpochSummary,
    training: TrainingArguments,
    device: torch.device,
    world: Distributed,
) -> None:
    """Optimizer steps over ``batches[position.batches_done:]``, advancing ``position`` and ``summary``;
    stops early at ``max_steps`` or on a preemption signal."""
    objective.trainable.train()
    running, started = None, time.perf_counter()
    loader = make_loader(train_set, batches[position.batches_done :])
    bar = tqdm(
        loader,
        desc=f"epoch {position.epoch + 1}/{training.epochs}",
        initial=position.batches_done,
        total=len(batches),
        dynamic_ncols=True,
        disable=not world.is_main,
    )
    for batch in bar:
        with autocast(device, training.precision):
            loss_sum, loss_count = objective.loss(to_device(batch, device), network)
        global_count = world.sum(torch.as_tensor(loss_count, dtype=torch.float32, device=device))
        # DDP averages gradients over processes: scale so the result is the global mean
        loss = loss_sum * (world.world_size / global_count)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        position.step, position.batches_done = position.step + 1, position.batches_done + 1
        summary.sentences += len(batch["attention_mask"]) * world.world_size
        value = (world.sum(loss_sum.float()) / global_count).item()
        summary.loss_total, summary.batches = summary.loss_total + value, summary.batches + 1
        running = value if running is None else 0.95 * running + 0.05 * value
        bar.set_postfix(loss=f"{running:.4g}", step=position.step)
        summary.stopped = world.any(PREEMPTION.received is not None, device)
        if summary.stopped or (training.max_steps is not None and position.step >= training.max_steps):
            break
    bar.close()
    summary.seconds += time.perf_counter() - started


def _resume_state(run: RunDirectory, no_resume: bool, world: Distributed) -> dict | None:
    """Rank 0 decides (and moves an old run aside with --no_resume); the others then read the same
    checkpoint, before rank 0 writes anything new."""
    state = run.resume_state(no_resume) if world.is_main else None
    world.barrier()
    if not world.is_main:
        state = run.resume_state(False)
    world.barrier()
    return state


def _state(
    objective: Objective,
    optimizer,
    position: Position,
    record: dict | None = None,
    epoch_progress: EpochSummary | None = None,
) -> dict:
    state = {
        "model": objective.trainable.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": position.epoch,
        "batches_done": position.batches_done,
        "step": position.step,
        "rng": rng_state(),
    }
    if record is not None:
        state["record"] = record
    if epoch_progress is not None:
        state["epoch_progress"] = epoch_progress.progress()
    if isinstance(objective.trainable, (MultiHeadAttention, TransformerLayer)):
        state["spec"] = objective.trainable.spec  # what assembly rebuilds the module from
    return state


def _format(record: dict) -> str:
    return " ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in record.items()
    )
