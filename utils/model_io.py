"""The saved format of simplified BERTs: writing, reading, and reading the checkpoint of one trained block.

A simplified model is a folder holding:
- ``model.safetensors``: every weight (embeddings, layers, MLM head);
- ``sitra.json``: ``{"format": "sitra-simplified-bert", "version": 1, "teacher_config": {...},
  "layers": [{"kind": "teacher"|"student_attention"|"merged", "teacher_layers": [...], "heads", "d_k",
  "dropout", "intermediate_size"}, ...], "meta": {...}}``;
- the tokenizer files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from transformers import AutoTokenizer, BertConfig, PreTrainedTokenizerBase

from models import SimplifiedBert
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.export import export_hf, is_exported, load_exported
from utils.files import atomic_write_dir

SPEC_FILE = "sitra.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "sitra-simplified-bert"

log = logging.getLogger(__name__)


def save_simplified(
    model: SimplifiedBert, tokenizer: PreTrainedTokenizerBase, folder: str | Path, meta: dict | None = None
) -> None:
    """Write the folder atomically: an existing model there is replaced only once the new one is complete."""

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_model(model, str(tmp / WEIGHTS_FILE))  # de-duplicates the tied embedding/decoder weight
        spec = {"format": FORMAT, "version": 1, **model.spec, "meta": meta or {}}
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2))
        tokenizer.save_pretrained(tmp)

    atomic_write_dir(Path(folder), write)


def save_and_export(
    model: SimplifiedBert, tokenizer: PreTrainedTokenizerBase, folder: str | Path, meta: dict, export_dir: str | None
) -> None:
    """:func:`save_simplified`, and with ``export_dir`` (``--export_hf``) the model as a Hugging Face folder there."""
    save_simplified(model, tokenizer, folder, meta)
    if export_dir:
        kind = export_hf(model, tokenizer, export_dir, meta)
        log.info("exported %s as a Hugging Face folder (%s) to %s", folder, kind, export_dir)


def model_fingerprint(folder: str | Path) -> str | None:
    """sha256 of a saved model's weights and spec, whole: a model rebuilt in place may keep its size and its
    embeddings (the first MiB, all that :func:`utils.teacher.weights_fingerprint` reads). None when the folder holds
    no weight file (loading it names the problem)."""
    if not (Path(folder) / WEIGHTS_FILE).is_file():
        return None
    return files_fingerprint([Path(folder) / WEIGHTS_FILE, Path(folder) / SPEC_FILE])  # an exported one: no spec


def files_fingerprint(paths: list[Path]) -> str:
    """sha256 of the files ``paths`` that exist, whole, in order (16 hex digits)."""
    digest = hashlib.sha256()
    for path in paths:
        if not path.is_file():
            continue
        with open(path, "rb") as handle:
            while chunk := handle.read(2**24):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def is_simplified(folder: str | Path) -> bool:
    return (Path(folder) / SPEC_FILE).is_file()


def load_simplified(
    folder: str | Path, device: torch.device | str = "cpu"
) -> tuple[SimplifiedBert, PreTrainedTokenizerBase, dict]:
    """Model (eval mode), tokenizer and the spec's ``meta`` of a saved simplified model, or of a folder
    written by ``export_hf.py`` (its meta is empty)."""
    folder = Path(folder)
    if not (folder / SPEC_FILE).exists() and is_exported(folder):
        return load_exported(folder).to(device), _tokenizer(folder), {}
    try:
        spec = json.loads((folder / SPEC_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"--model {folder}: cannot read {SPEC_FILE} ({type(error).__name__})") from None
    _check_spec(folder, spec)
    model = SimplifiedBert.from_spec(BertConfig.from_dict(spec["teacher_config"]), spec["layers"])
    try:
        missing, unexpected = load_model(model, str(folder / WEIGHTS_FILE), strict=False)
    except Exception as error:  # missing file, truncated header, shape mismatch
        raise UserError(f"--model {folder}: cannot load {WEIGHTS_FILE} ({str(error).splitlines()[0][:200]})") from None
    really_missing = sorted(set(missing) - _tied_aliases(model, set(missing)))
    if unexpected or really_missing:
        raise UserError(
            f"--model {folder}: weights do not match {SPEC_FILE} "
            f"(missing {really_missing[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    return model.to(device).eval(), _tokenizer(folder), spec.get("meta", {})


RESERVED_NAMES = ("teacher", "reference")  # what an evaluation names its own rows (utils.evaluation)


def model_names(folders: list[Path]) -> list[str]:
    """Each saved model's name, its folder's: two folders of one name, or one named as an evaluation names its
    own rows, would replace another model's figures, so they are refused (before anything is loaded)."""
    names = [Path(folder).name for folder in folders]
    clashes = sorted({name for name in names if names.count(name) > 1 or name in RESERVED_NAMES})
    if clashes:
        raise UserError(f"--models: {', '.join(clashes)} named twice, or as the evaluation's own "
                        f"{'/'.join(RESERVED_NAMES)} (a model is named by its folder): rename the folder")  # fmt: skip
    return names


def load_models(folders: list[Path], device: torch.device | str = "cpu") -> tuple[dict, dict]:
    """(name -> model, name -> meta) of several saved models, each named by its folder (:func:`model_names`)."""
    loaded = {name: load_simplified(folder, device) for name, folder in zip(model_names(folders), folders, strict=True)}
    return {name: m[0] for name, m in loaded.items()}, {name: m[2] for name, m in loaded.items()}


def _tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    try:
        # a BERT config stands in for the folder's: an exported sitra-bert config would ask for remote code
        return AutoTokenizer.from_pretrained(folder, config=BertConfig(), trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise UserError(f"--model {folder}: cannot load its tokenizer ({str(error).splitlines()[0][:200]})") from None


LAYER_KEYS = ("kind", "teacher_layers", "heads", "d_k", "intermediate_size")


def _check_spec(folder: Path, spec) -> None:
    """A one-line error for a spec file that is JSON but not of the expected shape."""
    problem = None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        problem = "is not a sitra model spec"
    elif not isinstance(spec.get("teacher_config"), dict) or not isinstance(spec.get("layers"), list):
        problem = "lacks teacher_config or layers"
    else:
        bad = [
            i for i, layer in enumerate(spec["layers"]) if not isinstance(layer, dict) or set(LAYER_KEYS) - set(layer)
        ]
        if bad:
            problem = f"layer {bad[0]} lacks one of {', '.join(LAYER_KEYS)}"
    if problem:
        raise UserError(f"--model {folder}: {SPEC_FILE} {problem}")


def _tied_aliases(model: torch.nn.Module, missing: set[str]) -> set[str]:
    """Names in ``missing`` whose tensor was loaded under another (tied) name."""
    names_by_tensor: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_by_tensor.setdefault(id(parameter), []).append(name)
    return {name for names in names_by_tensor.values() if set(names) - missing for name in names if name in missing}


def load_block_checkpoint(
    path: str | Path, heads: int | None = None, d_k: int | None = None, flag: str = "--init_from"
) -> dict:
    """The checkpoint of a block run (a student attention or a merged layer), checked against the
    expected heads and d_k when given; a missing or corrupt file is a one-line :class:`UserError`."""
    state = load_checkpoint(path, flag)
    identity = state.get("identity", {})
    expected = {"block_heads": heads, "block_d_k": d_k}
    wrong = [
        f"{key}={identity.get(key)} (expected {value})"
        for key, value in expected.items()
        if value is not None and identity.get(key) != value
    ]
    if wrong:
        raise UserError(f"{flag} {path}: checkpoint was trained with {', '.join(wrong)}")
    return state
