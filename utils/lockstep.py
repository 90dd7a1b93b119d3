"""Several students on one batch: :func:`fit_together` trains objectives in lockstep, every batch drawn once and
turned into one batch per member by ``split`` (e.g. one teacher forward whose activations feed every student).
Each member keeps its own checkpoints, metrics, resume and dropout stream, so its weights are those it gets
trained alone with the same seed (:func:`utils.training.fit`)."""

from __future__ import annotations

from collections.abc import Callable

from utils.args import TrainingArguments
from utils.distributed import init_distributed
from utils.preemption import PREEMPTION
from utils.run_state import Member
from utils.training import select, start_members, train_members


def fit_together(
    members: list[Member],
    train_set,
    valid_loader,
    training: TrainingArguments,
    device,
    seed: int,
    split: Callable[[dict], list[dict]] | None = None,
) -> list[list[dict]]:
    """Train every member (default ``split``: the same batch for all). Members resumed at different positions
    train in groups, one group after another. Returns each member's metric records."""
    world = init_distributed(device)
    with PREEMPTION.deferred():
        start_members(members, valid_loader, training, device, world)
        groups: dict[tuple[int, int, int], list[int]] = {}
        for index, member in enumerate(members):
            position = member.position
            groups.setdefault((position.epoch, position.batches_done, position.step), []).append(index)
        for indices in groups.values():
            group = [members[index] for index in indices]
            train_members(
                group, train_set, valid_loader, training, device, seed, world, select(split, indices, members)
            )
    return [member.run.read_metrics() for member in members]
