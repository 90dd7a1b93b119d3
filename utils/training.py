"""The one training loop every script uses: epochs of an :class:`Objective`, evaluation, checkpoints, resume."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from utils.checkpoint import RunDirectory, rng_state, set_rng_state
from utils.data import MaskedSentences, epoch_batches, make_loader
from utils.distributed import EXIT_REQUEUE, PreemptionGuard, init_distributed

log = logging.getLogger(__name__)


class Objective(Protocol):
    """What a script trains.

    ``trainable`` holds every parameter the optimizer updates (and only it is checkpointed);
    ``network`` is the module whose forward ``loss`` runs (wrapped in DistributedDataParallel under
    torchrun); ``loss`` maps a batch on the device to ``(sum, count)``: the loss is ``sum / count``,
    kept apart so that processes with different token counts average exactly like one process;
    ``evaluate`` maps the validation loader to named metrics.
    """

    trainable: nn.Module
    network: nn.Module

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]: ...

    def evaluate(self, loader) -> dict[str, float]: ...


def pick_device(requested: str | None = None, local_rank: int = 0) -> torch.device:
    """``requested``, else this process's GPU (``cuda:LOCAL_RANK`` under torchrun) when there is one, else the CPU."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast(device: torch.device, precision: str):
    """Mixed precision on GPUs (bf16 by default); full fp32 on the CPU unless asked otherwise."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the dropout randomness of one epoch, so a resumed epoch replays exactly."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def make_optimizer(module: nn.Module, args) -> torch.optim.Optimizer:
    parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
    return torch.optim.AdamW(
        parameters, lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay
    )


def fit(
    objective: Objective,
    train_set: MaskedSentences,
    valid_loader,
    args,
    run: RunDirectory,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[dict]:
    """Train ``objective.trainable`` for ``args.epochs`` epochs (or ``args.max_steps`` steps).

    Epoch 0 is the evaluation before training. After every epoch: evaluate, append a JSON line to
    ``metrics.jsonl``, write the rolling checkpoint (and a kept one every ``save_checkpoint_every``).
    Resumes from the run's latest checkpoint unless ``args.no_resume``. On SIGTERM/SIGUSR1 it finishes
    the step, checkpoints its position in the epoch and exits with :data:`EXIT_REQUEUE`.
    Returns all metric records.
    """
    world = init_distributed(device)
    run.writer = world.is_main
    optimizer = optimizer or make_optimizer(objective.trainable, args)
    precision = getattr(args, "precision", "auto")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = _resume_state(run, args.no_resume, world)
    if state is None:
        epoch, batches_done, step = 0, 0, 0
        objective.trainable.eval()
        record = {"epoch": 0, "step": 0, **objective.evaluate(valid_loader)}
        log.info("epoch 0 (before training): %s", _format(record))
        run.log_metrics(record)
        run.save(_state(objective, optimizer, epoch, batches_done, step))
    else:
        objective.trainable.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, batches_done, step = state["epoch"], state["batches_done"], state["step"]
        set_rng_state(state["rng"])
        run.truncate_metrics(epoch)
        log.info("resuming %s at epoch %d (batch %d), step %d", run.latest, epoch + 1, batches_done, step)
    if world.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        objective.network = nn.parallel.DistributedDataParallel(objective.network, device_ids=device_ids)

    def reached_max_steps() -> bool:
        return args.max_steps is not None and step >= args.max_steps

    lengths = train_set.lengths() if getattr(args, "group_by_length", True) else None  # for batches of similar length
    with PreemptionGuard() as preemption:
        while epoch < args.epochs and not reached_max_steps():
            current = epoch + 1
            train_set.set_epoch(current)
            batches = epoch_batches(len(train_set), args.batch_size, args.seed, current, True, world.rank, world.world_size,
                                    lengths=lengths)  # fmt: skip
            if batches_done == 0:
                torch.manual_seed(epoch_seed(args.seed, current))  # else the checkpoint restored the RNG mid-epoch
            objective.trainable.train()
            total_loss, count, sentences, running, stopped = 0.0, 0, 0, None, False
            started = time.perf_counter()
            bar = tqdm(make_loader(train_set, batches[batches_done:]), desc=f"epoch {current}/{args.epochs}",
                       initial=batches_done, total=len(batches), dynamic_ncols=True, disable=not world.is_main)  # fmt: skip
            for batch in bar:
                with autocast(device, precision):
                    loss_sum, loss_count = objective.loss(to_device(batch, device))
                global_count = world.sum(torch.as_tensor(loss_count, dtype=torch.float32, device=device))
                # DDP averages gradients over processes: scale so the result is the global mean
                loss = loss_sum * (world.world_size / global_count)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step, batches_done = step + 1, batches_done + 1
                sentences += len(batch["attention_mask"]) * world.world_size
                value = (world.sum(loss_sum.float()) / global_count).item()
                total_loss, count = total_loss + value, count + 1
                running = value if running is None else 0.95 * running + 0.05 * value
                bar.set_postfix(loss=f"{running:.4g}", step=step)
                stopped = world.any(preemption.received is not None, device)
                if reached_max_steps() or stopped:
                    break
            bar.close()
            finished = batches_done == len(batches)
            if stopped and not finished:  # checkpoint the position in the epoch, no evaluation: time is short
                run.save(_state(objective, optimizer, epoch, batches_done, step))
                log.warning("preempted at epoch %d, batch %d (step %d); checkpoint written, exiting", current, batches_done, step)
                raise SystemExit(EXIT_REQUEUE)
            objective.trainable.eval()
            seconds = time.perf_counter() - started
            record = {"epoch": current, "step": step, "train_loss": total_loss / max(count, 1), "train_seconds": seconds,
                      "sentences_per_second": sentences / seconds}  # fmt: skip
            if not finished:
                record["batches_done"] = batches_done  # a partial epoch, ended by --max_steps
            record.update(objective.evaluate(valid_loader))
            log.info("epoch %d: %s", current, _format(record))
            run.log_metrics(record)
            if finished:
                epoch, batches_done = current, 0
            run.save(_state(objective, optimizer, epoch, batches_done, step))
            if stopped:
                raise SystemExit(EXIT_REQUEUE)
    if world.enabled:
        objective.network = objective.network.module
    return run.read_metrics()


def _resume_state(run: RunDirectory, no_resume: bool, world) -> dict | None:
    """Rank 0 decides (and moves an old run aside with --no_resume); the others then read the same
    checkpoint, before rank 0 writes anything new."""
    state = run.resume_state(no_resume) if world.is_main else None
    world.barrier()
    if not world.is_main:
        state = run.resume_state(False)
    world.barrier()
    return state


def _state(objective: Objective, optimizer, epoch: int, batches_done: int, step: int) -> dict:
    return {
        "model": objective.trainable.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "batches_done": batches_done,
        "step": step,
        "rng": rng_state(),
    }


def _format(record: dict) -> str:
    return " ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in record.items())
