"""The one training loop every script uses: epochs of an :class:`~utils.objectives.Objective`, evaluation,
checkpoints, resume.

Read top to bottom: :func:`fit` starts (or resumes) a run and trains it; :func:`train_members` runs the epochs,
:func:`_train_epoch` the batches, :func:`_step` one optimizer step, :func:`_end_epoch` the evaluation and
checkpoint. Where a run stands and how it resumes is :mod:`utils.run_state`; several students trained on the
same batches is :mod:`utils.lockstep`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

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
from utils.flops import FlopRate, add_to_stage
from utils.objectives import Objective
from utils.preemption import EXIT_REQUEUE, PREEMPTION, exit_if_signalled
from utils.run_state import (
    EpochSummary,
    Member,
    checkpoint_state,
    finished_training,
    format_record,
    save,
    start_or_resume,
    stop_if_diverged,
    stopped_early,
)

log = logging.getLogger(__name__)


def make_optimizer(module: nn.Module, training: TrainingArguments) -> torch.optim.Optimizer:
    parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
    betas = (training.adam_beta1, training.adam_beta2)
    return torch.optim.AdamW(parameters, lr=training.lr, betas=betas, weight_decay=training.adam_weight_decay)


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
    exit_if_signalled(None)
    if training.stop_patience is not None and any(member.loss_metric is None for member in members):
        raise UserError(f"--stop_patience: {type(members[0].objective).__name__} reports no validation loss to stop on")
    for member in members:
        member.run.writer = world.is_main
        start_or_resume(member, valid_loader, training.no_resume, world)
        member.network = member.objective.network
        if world.enabled:  # the wrapper only runs the loss; evaluation and checkpoints use the module itself
            device_ids = [device.index] if device.type == "cuda" else None
            member.network = nn.parallel.DistributedDataParallel(member.network, device_ids=device_ids)
    exit_if_signalled(members[0].position.step)


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
        current, batches = _begin_epoch(group, train_set, training, seed, world, lengths, alone=len(members) == 1)
        left = {}  # position in group -> why it diverged this epoch
        member_split = select(split, active, members)
        stopped = _train_epoch(
            group, train_set, batches, training, device, world, member_split, left if lockstep else None
        )
        _leave(group, left)
        diverged.update({active[at]: error for at, error in left.items()})
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


def _begin_epoch(group: list[Member], train_set, training, seed: int, world, lengths, alone: bool) -> tuple:
    """The epoch ``group`` trains next and its batches; at its start, the dropout stream of that epoch (each member's
    own, when it trains with others); mid-epoch, the checkpoint restored the RNG."""
    position = group[0].position
    current = position.epoch + 1
    train_set.set_epoch(current)
    batches = epoch_batches(
        len(train_set), training.batch_size, seed, current, True, world.rank, world.world_size, lengths=lengths
    )
    if position.batches_done == 0:
        torch.manual_seed(int(np.random.SeedSequence([seed, current]).generate_state(1)[0]))  # replays on resume
        for member in group:  # with others, each draws dropout from the stream it would have alone
            member.rng = None if alone else rng_state()
    return current, batches


def _leave(group: list[Member], left: dict[int, Diverged]) -> None:
    """Checkpoint the members of ``group`` that diverged this epoch (``left``: position -> why) where they stopped,
    so a rerun with a smaller --lr resumes there."""
    for at in left:
        set_rng_state(group[at].rng)
        group[at].run.save(checkpoint_state(group[at], epoch_progress=group[at].summary))


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
    stopped, shared, rates = False, FlopRate(), [FlopRate() for _ in members]  # FLOPs per token, on the first batch
    for index, batch in enumerate(bar):
        batch = to_device(batch, device)
        with shared.measure(batch, index == 0), autocast(device, training.precision):  # as a student's own would run
            member_batches = split(batch) if split is not None else [batch] * len(members)
        value = _step_each(members, member_batches, training, device, world, diverged, (batch, index == 0, rates))
        going_on = [member for at, member in enumerate(members) if at not in (diverged or {})]
        for member in going_on:  # the teacher forward they share, charged to each as if alone; every process's
            member.summary.charge(shared.charge(batch) * world.world_size, shared=True)
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


def _step_each(members, member_batches, training, device, world, diverged: dict | None, counting) -> float | None:
    """One step of each member still going on, on its batch (each in its own dropout stream), its FLOPs counted
    (``counting``: the loader's batch, whether to measure now, each member's rate); a member that diverges joins
    ``diverged`` (without it, a run of its own: raised). Returns the last step's loss."""
    value, (batch, measure, rates) = None, counting
    for at, (member, member_batch) in enumerate(zip(members, member_batches, strict=True)):
        if diverged is not None and at in diverged:
            continue
        if member.rng is not None:
            set_rng_state(member.rng)
        try:
            with rates[at].measure(batch, measure):
                value = _step(member, member_batch, training, device, world)
            member.summary.charge(rates[at].charge(batch) * world.world_size)
        except Diverged as error:
            if diverged is None:
                raise
            diverged[at] = error
            log.error("%s; the other models in lockstep go on", error)
            continue
        if member.rng is not None:
            member.rng = rng_state()
    return value


def _step(member: Member, batch: dict, training, device, world) -> float:
    """One optimizer step of ``member`` on ``batch`` (on the device); returns the batch's mean loss."""
    with autocast(device, training.precision):
        loss_sum, loss_count = member.objective.loss(batch, member.network)
    global_count = world.sum(torch.as_tensor(loss_count, dtype=torch.float32, device=device))
    # DDP averages gradients over processes: scale so the result is the global mean
    loss = loss_sum * (world.world_size / global_count)
    member.optimizer.zero_grad(set_to_none=True)
    member.scaler.scale(loss).backward()
    stop_if_diverged(member, loss)
    member.scaler.step(member.optimizer)
    member.scaler.update()
    position, summary = member.position, member.summary
    position.step, position.batches_done = position.step + 1, position.batches_done + 1
    summary.sentences += len(batch["attention_mask"]) * world.world_size
    value = (world.sum(loss_sum.float()) / global_count).item()
    summary.loss_total, summary.batches = summary.loss_total + value, summary.batches + 1
    return value


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
        if stopped_early(member, training):
            record["stopped_early"] = True
            rule = (member.loss_metric, training.stop_min_delta, training.stop_patience, current, training.epochs)
            message = "%s: %s fell by less than %g of its best for %d epoch(s): stopped at epoch %d of at most %d"
            log.info(message, member.run.path.name, *rule)
    save(member, checkpoint_state(member, record=record))
    member.run.log_metrics(record)
    if member.run.writer:
        add_to_stage(member.run.path.name, current, summary.flops, summary.shared_flops)
    member.summary = EpochSummary()
