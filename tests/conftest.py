"""Shared fixtures: a tiny random BERT teacher with the real bert-base-uncased tokenizer, and a small
WikiText-2 folder cut from the offline data ($SITRA_DATA_DIR, default ../shared/data/wikitext2)."""

import os
from pathlib import Path

import pytest
import torch
from slurm_cluster import start_cluster
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from utils.storage import Storage
from utils.teacher import resolve_teacher

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SITRA_DATA_DIR", REPO.parent / "shared" / "data" / "wikitext2"))


def tiny_config(**overrides) -> BertConfig:
    values = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    values.update(overrides)
    return BertConfig(**values)


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_teacher("minilm"))


def save_tiny_teacher(folder: Path, tokenizer, **config) -> str:
    torch.manual_seed(0)
    BertForMaskedLM(tiny_config(**config)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tokenizer) -> str:
    """A 3-layer, 32-wide random BERT masked LM saved as a Hugging Face folder."""
    return save_tiny_teacher(tmp_path_factory.mktemp("tiny_teacher"), tokenizer)


@pytest.fixture(scope="session")
def tiny_teacher_5_layers(tmp_path_factory, tokenizer) -> str:
    """Like tiny_teacher_dir with 5 layers: two pairs to merge and an odd last layer."""
    return save_tiny_teacher(tmp_path_factory.mktemp("tiny_teacher_5"), tokenizer, num_hidden_layers=5)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
    """The first lines of each WikiText-2 split: a few hundred sentences each."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"offline WikiText-2 not found at {SHARED_DATA}; set SITRA_DATA_DIR")
    folder = tmp_path_factory.mktemp("wikitext2")
    for name, lines in (("wiki.train.tokens", 400), ("wiki.valid.tokens", 150), ("wiki.test.tokens", 150)):
        with open(SHARED_DATA / name, encoding="utf-8") as source:
            (folder / name).write_text("".join(next(source) for _ in range(lines)), encoding="utf-8")
    return str(folder)


@pytest.fixture
def run_flags(tiny_teacher_dir, tiny_data_dir, tmp_path):
    """Flags of a fast run on the tiny teacher and data, as a function:
    ``run_flags(storage=path, drop=("batch_size",), seq_len=20)`` -> an argv list (storage defaults to a
    fresh temporary folder; ``drop`` leaves flags at the script's default; keywords set or add flags)."""

    def make(storage=None, drop=(), **values) -> list[str]:
        flags = {
            "teacher": tiny_teacher_dir,
            "data_dir": tiny_data_dir,
            "storage_directory": str(storage or tmp_path / "storage"),
            "max_sentences": 96,
            "batch_size": 16,
            "eval_sentences": 32,
        }
        for name in drop:
            del flags[name]
        flags.update(values)
        return [item for name, value in flags.items() for item in (f"--{name}", str(value))]

    return make


@pytest.fixture
def slurm_accounting(tmp_path):
    """A running one-node SLURM cluster with accounting (slurmdbd on a private MariaDB), so sacct and sacctmgr work:
    cluster ``sitra-test``, partition ``debug``, the current user's default account ``sitra``. Yields the environment
    that points the SLURM clients at it (``SLURM_CONF``, PATH first to client wrappers that default SLURM_CONF, for
    jobs that drop it); see tests/slurm_cluster.py. Pass it to subprocesses, or monkeypatch it into os.environ."""
    with start_cluster(tmp_path / "slurm", accounting=True) as env:
        yield env


def one_line_error(capsys, main, argv: list[str]) -> str:
    """Run a script's ``main`` expecting exit code 2 and exactly one ``error:`` line on stderr; returns it."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    return errors[0]


def storage_of(flags: list[str]) -> Storage:
    """The storage layout of the run these flags describe."""
    return Storage(flags[flags.index("--storage_directory") + 1])
