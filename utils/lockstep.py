"""Several students on one batch: :func:`fit_together` trains objectives in lockstep, every batch drawn once and
turned into one batch per member by ``split`` (e.g. one teacher forward whose activations feed every student).
Each member keeps its own checkpoints, metrics, resume and dropout stream, so its weights are those it gets
trained alone with the same seed (:func:`utils.training.fit`)."""

from __future__ import annotations

from collections.abc import Callable

from utils.args import TrainingArguments
from utils.distributed import init_distributed
from utils.errors import Diverged
from utils.preemption import PREEMPTION
from utils.run_state import Member, finished_training
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
        diverged = []  # a group's divergence does not keep the later groups from training
        for indices in groups.values():
            group = [members[index] for index in indices]
            try:
                train_members(group, train_set, valid_loader, training, device, seed, world,
                              select(split, indices, members), lockstep=len(members) > 1)  # fmt: skip
            except Diverged as error:
                if len(members) == 1:
                    raise
                diverged.append(str(error))
        if diverged:  # after every group: one line for all of them
            finished = sum(finished_training(member, training) for member in members)
            raise Diverged(" | ".join(diverged) + f" ({finished} of {len(members)} in lockstep finished)")
    return [member.run.read_metrics() for member in members]
