"""The one training loop every script uses: epochs of an :class:`Objective`, evaluation, checkpoints, resume.

Read top to bottom: :func:`fit` starts (or resumes) a run and trains it; :func:`train_members` runs the epochs,
:func:`_train_epoch` the batches, :func:`_step` one optimizer step, :func:`_end_epoch` the evaluation and
checkpoint. Where a run stands and how it resumes is :mod:`utils.run_state`; several students trained on the
same batches is :mod:`utils.lockstep`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from utils.args import TrainingArguments
from utils.checkpoint import RunDirectory, rng_state, set_rng_state
from utils.data import epoch_batches, make_loader
from utils.device import autocast, to_device
from utils.distributed import Distributed, init_distributed
from utils.errors import Diverged, UserError
from utils.preemption import EXIT_REQUEUE, PREEMPTION
from utils.run_state import (
    EpochSummary,
    Member,
    Position,
    checkpoint_state,
    format_record,
    plateaued,
    save,
    start_or_resume,
)

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
    validation_loss: str  # the name of the evaluation's loss (lower is better) --stop_patience watches; optional

    def loss(self, batch: dict[str, torch.Tensor], network: nn.Module) -> tuple[torch.Tensor, int]: ...

    def evaluate(self, loader) -> dict[str, float]: ...


def make_optimizer(module: nn.Module, training: TrainingArguments) -> torch.optim.Optimizer:
    parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
    betas = (training.adam_beta1, training.adam_beta2)
    return torch.optim.AdamW(parameters, lr=training.lr, betas=betas, weight_decay=training.adam_weight_decay)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the dropout randomness of one epoch, so a resumed epoch replays exactly."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


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
    with :data:`EXIT_REQUEUE`; a non-finite loss or gradient stops it (:class:`Diverged`) before the step is
    applied. ``seed`` fixes the order of sentences and the dropout of every epoch. Returns all metric records.
    """
    member = Member(objective, run, optimizer or make_optimizer(objective.trainable, training))
    world = init_distributed(device)
    with PREEMPTION.deferred():
        start_members([member], valid_loader, training, device, world)
        train_members([member], train_set, valid_loader, training, device, seed, world)
    return run.read_metrics()


def start_members(members: list[Member], valid_loader, training: TrainingArguments, device, world: Distributed) -> None:
    """Start or resume every member's run, and wrap its network for DistributedDataParallel under torchrun."""
    _exit_if_signalled(None)
    if training.stop_patience is not None and any(member.loss_metric is None for member in members):
        raise UserError(f"--stop_patience: {type(members[0].objective).__name__} reports no validation loss to stop on")
    for member in members:
        member.run.writer = world.is_main
        start_or_resume(member, valid_loader, training.no_resume, world)
        member.network = member.objective.network
        if world.enabled:  # the wrapper only runs the loss; evaluation and checkpoints use the module itself
            device_ids = [device.index] if device.type == "cuda" else None
            member.network = nn.parallel.DistributedDataParallel(member.network, device_ids=device_ids)
    _exit_if_signalled(members[0].position)


def train_members(
    members: list[Member],
    train_set,
    valid_loader,
    training: TrainingArguments,
    device: torch.device,
    seed: int,
    world: Distributed,
    split: Callable[[dict], list[dict]] | None = None,
    lockstep: bool = False,
) -> None:
    """The epochs of members standing at the same position (one member, or several in lockstep, each with
    its own dropout stream; ``split(batch)`` gives one batch per member, default the same batch for all). A member
    whose validation loss stopped falling (``--stop_patience``) leaves the lockstep; the others go on; so does one
    that diverges (``lockstep``: one of several, even where it trains alone here), raised after the others."""
    lockstep = lockstep or len(members) > 1
    for member in members:
        member.scaler = torch.amp.GradScaler(device.type, enabled=training.precision == "fp16")
    lengths = train_set.lengths() if training.group_by_length else None  # for batches of similar length
    active = [index for index, member in enumerate(members) if not finished_training(member, training)]
    diverged: dict[int, Diverged] = {}  # index -> why: it left the lockstep, the others go on
    while active:
        group = [members[index] for index in active]
        position = group[0].position
        current = position.epoch + 1
        train_set.set_epoch(current)
        batches = epoch_batches(
            len(train_set), training.batch_size, seed, current, True, world.rank, world.world_size, lengths=lengths
        )
        if position.batches_done == 0:
            torch.manual_seed(epoch_seed(seed, current))  # else the checkpoint restored the RNG mid-epoch
            for member in group:  # with others, each draws dropout from the stream it would have alone
                member.rng = rng_state() if len(members) > 1 else None
        left = {}  # position in group -> why it diverged this epoch
        stopped = _train_epoch(
            group,
            train_set,
            batches,
            training,
            device,
            world,
            select(split, active, members),
            left if lockstep else None,
        )
        for at, error in left.items():  # checkpointed where it stopped: a rerun with a smaller --lr resumes there
            set_rng_state(group[at].rng)
            group[at].run.save(checkpoint_state(group[at], epoch_progress=group[at].summary))
            diverged[active[at]] = error
        going_on = [member for at, member in enumerate(group) if at not in left]
        finished = bool(going_on) and going_on[0].position.batches_done == len(batches)
        for member in going_on:
            if member.rng is not None:
                set_rng_state(member.rng)  # what its checkpoint records
            _end_epoch(member, current, finished, stopped, valid_loader, training)
        if stopped:
            raise SystemExit(EXIT_REQUEUE)
        active = [
            index for index in active if index not in diverged and not finished_training(members[index], training)
        ]
    if diverged:  # after the others' epochs: one line for all of them
        raise Diverged(" | ".join(str(error) for error in diverged.values()))


def select(
    split: Callable[[dict], list[dict]] | None, indices: list[int], members: list
) -> Callable[[dict], list[dict]] | None:
    """``split`` for the members at ``indices`` only (all of them: ``split`` itself)."""
    if split is None or len(indices) == len(members):
        return split

    def selected(batch: dict) -> list[dict]:
        batches = split(batch)  # one teacher forward for the whole group
        return [batches[index] for index in indices]

    return selected


def _train_epoch(members, train_set, batches, training, device, world, split, diverged: dict | None) -> bool:
    """Optimizer steps of every member over ``batches[position.batches_done:]``, advancing each member's
    position and summary; stops early at ``max_steps`` or on a preemption signal (returns True then). A member
    whose step diverges (:class:`Diverged`, nothing of the step applied) stops there and goes into ``diverged``
    (its index -> why) while the others go on; without ``diverged`` (a run of its own) it is raised."""
    position = members[0].position
    for member in members:
        member.objective.trainable.train()
    running, started = None, time.perf_counter()
    loader = make_loader(train_set, batches[position.batches_done :])
    students = f" ({len(members)} students)" if len(members) > 1 else ""
    bar = tqdm(
        loader,
        desc=f"epoch {position.epoch + 1}/{training.epochs}{students}",
        initial=position.batches_done,
        total=len(batches),
        dynamic_ncols=True,
        disable=not world.is_main,
    )
    stopped = False
    for batch in bar:
        batch = to_device(batch, device)
        with autocast(device, training.precision):  # as a student's own teacher forward would run
            member_batches = split(batch) if split is not None else [batch] * len(members)
        for at, (member, member_batch) in enumerate(zip(members, member_batches, strict=True)):
            if diverged is not None and at in diverged:
                continue
            if member.rng is not None:
                set_rng_state(member.rng)
            try:
                value = _step(member, member_batch, training, device, world)
            except Diverged as error:
                if diverged is None:
                    raise
                diverged[at] = error
                log.error("%s; the other models in lockstep go on", error)
                continue
            if member.rng is not None:
                member.rng = rng_state()
        going_on = [member for at, member in enumerate(members) if at not in (diverged or {})]
        if not going_on:
            break
        running = value if running is None else 0.95 * running + 0.05 * value
        bar.set_postfix(loss=f"{running:.4g}", step=going_on[0].position.step)
        stopped = world.any(PREEMPTION.received is not None, device)
        if stopped or (training.max_steps is not None and going_on[0].position.step >= training.max_steps):
            break
    bar.close()
    for member in members:
        member.summary.seconds += time.perf_counter() - started
        member.summary.stopped = stopped
    return stopped


def _step(member: Member, batch: dict, training, device, world) -> float:
    """One optimizer step of ``member`` on ``batch`` (on the device); returns the batch's mean loss."""
    with autocast(device, training.precision):
        loss_sum, loss_count = member.objective.loss(batch, member.network)
    global_count = world.sum(torch.as_tensor(loss_count, dtype=torch.float32, device=device))
    # DDP averages gradients over processes: scale so the result is the global mean
    loss = loss_sum * (world.world_size / global_count)
    member.optimizer.zero_grad(set_to_none=True)
    member.scaler.scale(loss).backward()
    _stop_if_diverged(member, loss)
    member.scaler.step(member.optimizer)
    member.scaler.update()
    position, summary = member.position, member.summary
    position.step, position.batches_done = position.step + 1, position.batches_done + 1
    summary.sentences += len(batch["attention_mask"]) * world.world_size
    value = (world.sum(loss_sum.float()) / global_count).item()
    summary.loss_total, summary.batches = summary.loss_total + value, summary.batches + 1
    return value


def _stop_if_diverged(member: Member, loss: torch.Tensor) -> None:
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


def _end_epoch(member: Member, current: int, finished: bool, stopped: bool, valid_loader, training) -> None:
    """Evaluate and checkpoint after an epoch, or on preemption in mid-epoch only checkpoint the position
    (no evaluation: time is short). A finished epoch's validation loss joins the member's history, and the record
    says ``stopped_early`` when the stopping rule ends the run there."""
    objective, position, summary = member.objective, member.position, member.summary
    if stopped and not finished:
        member.run.save(checkpoint_state(member, epoch_progress=summary))
        log.warning(
            "preempted at epoch %d, batch %d (step %d); checkpoint written, exiting (exit %d)",
            current,
            position.batches_done,
            position.step,
            EXIT_REQUEUE,
        )
        return
    record = summary.record(current, position, finished)
    objective.trainable.eval()
    record.update(objective.evaluate(valid_loader))
    log.info("epoch %d: %s", current, format_record(record))
    if finished:
        position.epoch, position.batches_done = current, 0
        if member.loss_metric:
            member.losses.append(record[member.loss_metric])
        if _stopped_early(member, training):
            record["stopped_early"] = True
            log.info(
                "%s: %s fell by less than %g of its best for %d epoch(s): stopped at epoch %d of at most %d",
                member.run.path.name,
                member.loss_metric,
                training.stop_min_delta,
                training.stop_patience,
                current,
                training.epochs,
            )
    save(member, checkpoint_state(member, record=record))
    member.run.log_metrics(record)
    member.summary = EpochSummary()


def finished_training(member: Member, training: TrainingArguments) -> bool:
    """Whether ``member`` has trained all it will: its epochs or steps, or its stopping rule ended it."""
    position = member.position
    if position.epoch >= training.epochs or (training.max_steps is not None and position.step >= training.max_steps):
        return True
    return position.batches_done == 0 and _stopped_early(member, training)


def _stopped_early(member: Member, training: TrainingArguments) -> bool:
    return plateaued(member.losses, training.stop_patience, training.stop_min_delta)


def _exit_if_signalled(position: Position | None) -> None:
    """A signal that came before training started: exit for requeueing (after the first checkpoint, if any)."""
    if PREEMPTION.received is not None:
        where = "before the first checkpoint" if position is None else f"at step {position.step}, checkpoint written"
        log.warning("stopped by a signal %s; exiting (exit %d)", where, EXIT_REQUEUE)
        raise SystemExit(EXIT_REQUEUE)
