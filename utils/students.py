"""Many students in one process (retrain_single_block.py, retrain_merge.py ``--block 0 2|all`` with several
shapes): every (block, shape) gets the run folder, flags and initialisation it would get alone; finished runs
are skipped. With ``--teacher_store`` or ``--cache_teacher`` the students train one after another on the
stored signal; otherwise they train in lockstep on the same batches, and one teacher forward per batch
feeds all of them (:func:`one_teacher_forward`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from utils.args import FeedForwardArguments, Flags, StudentArguments
from utils.checkpoint import RunDirectory
from utils.data import WikiTextSplits, eval_loader, load_data
from utils.lockstep import fit_together
from utils.objectives import Objective
from utils.run_state import Member
from utils.runs import already_finished
from utils.signals import STORED_INPUT, STORED_TARGET
from utils.teacher import Teacher, TeacherInfo, load_teacher
from utils.teacher_cache import signal_arrays, teacher_pass
from utils.training import fit, make_optimizer

log = logging.getLogger(__name__)


@dataclass
class StudentRun:
    """One (block, shape) of a many-students run: its single-student flags and its run folder."""

    block: int
    flags: Flags
    run: RunDirectory


def plan_students(
    flags: Flags, info: TeacherInfo, make_run: Callable[[Flags, TeacherInfo, int], RunDirectory], pair: bool = False
) -> list[StudentRun]:
    """Every (block, shape) of ``--block`` x ``--block_heads`` x ``--block_d_k`` (or x ``--ffn_width`` for
    feed-forward students; blocks are pair starts when ``pair``), each checked against the teacher and given
    its run."""
    students = []
    for block in flags.layer_selection.resolve(info.num_layers, pair=pair):
        info.check_layer(block, pair=pair)
        for single in _single_students(flags, block):
            students.append(StudentRun(block, single, make_run(single, info, block)))
    return students


def _single_students(flags: Flags, block: int) -> list[Flags]:
    """The flags of each single-student run of ``block``: one attention shape, or one feed-forward width."""
    feed_forward = getattr(flags, "feed_forward", None)
    if feed_forward is None or feed_forward.part != "ffn":
        return [flags.for_student(block, shape) for shape in flags.shape_grid.students()]
    default_shape = StudentArguments()  # the attention shape does not apply to a feed-forward student
    return [
        flags.for_student(block, default_shape).replacing(
            {FeedForwardArguments: FeedForwardArguments("ffn", [width], feed_forward.ffn_init)}
        )
        for width in feed_forward.ffn_width
    ]


def one_teacher_forward(teacher: Teacher, kind: str, blocks: list[int]) -> Callable[[dict], list[dict]]:
    """``split(batch)``: one teacher forward over a batch of sentences gives, for each ``kind`` run of
    ``blocks``, the batch with its stored input and target (:func:`utils.teacher_cache.signal_arrays`), as a
    store would hold them, but in full precision."""
    arrays = [signal_arrays(kind, block) for block in blocks]
    # the layer each array belongs to is the number in its name (hidden_3, attention_3); the output is always recorded
    layers = {int(name.rsplit("_", 1)[1]) for pair in arrays for name in pair}
    layers = {layer for layer in layers if layer < teacher.num_layers}

    def split(batch: dict) -> list[dict]:
        recorded = teacher_pass(teacher.model, layers, batch)
        return [{**batch, STORED_INPUT: recorded[source], STORED_TARGET: recorded[target]} for source, target in arrays]

    return split


def train_students(
    students: list[StudentRun],
    flags: Flags,
    info: TeacherInfo,
    device: torch.device,
    build: Callable[[StudentRun, Teacher, WikiTextSplits], tuple[Objective, object]],
    kind: str,
) -> dict[str, list[dict]]:
    """Train every unfinished student; ``build(student, teacher, data)`` gives its objective and training set
    (the store's or cache's slice, or the sentences); ``kind`` (block or merge) says which teacher signal
    each learns in lockstep.
    Returns the metric records of every student by run folder name."""
    pending = [student for student in students if not already_finished(student.run, student.flags)]
    if pending:
        teacher = load_teacher(info, device)
        data = load_data(flags.data, teacher.tokenizer)
        built = []
        for student in pending:
            torch.manual_seed(flags.data.seed)  # initialised as if it were the only student of the process
            built.append(build(student, teacher, data))
        valid = eval_loader(data.validation, flags.training.batch_size, flags.training.eval_sentences)
        stored = flags.cache.teacher_store or flags.cache.cache_teacher
        if len(pending) > 1 and not stored:
            log.info("%d students in lockstep: one teacher forward per batch feeds all of them", len(pending))
            members = [
                Member(objective, student.run, make_optimizer(objective.trainable, flags.training))
                for student, (objective, _) in zip(pending, built, strict=True)
            ]
            split = one_teacher_forward(teacher, kind, [student.block for student in pending])
            fit_together(members, data.train, valid, flags.training, device, flags.data.seed, split)
        else:
            for student, (objective, train_set) in zip(pending, built, strict=True):
                fit(objective, train_set, valid, student.flags.training, student.run, device, flags.data.seed)
    return {student.run.path.name: student.run.read_metrics() for student in students}
