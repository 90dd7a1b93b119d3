"""The layout of ``--storage_directory``: the only module that knows where things go under it.

::

    {root}/checkpoints/wikitext2/{run}/     one training run: latest.pt, epoch_NNN.pt, metrics.jsonl, and for a
        block run best.pt (its epoch of lowest validation loss: what assembly and later stages read)
        block runs are named {kind}_{block}_{d_k}_{heads}{variant} (kind: block, till_end, merge, conditioned;
        variant: "" with today's defaults, else e.g. -init_svd or -ce_logits, see utils/identity.py);
        feed-forward students ffn_{block}_{width}{variant}
    {root}/models/{name}/                   saved simplified models (sitra.json + model.safetensors)
    {root}/results/{name}/                  evaluations: metrics.json, metrics.md, predictions.tsv
    {root}/cache/{name}/                    teacher caches (--cache_teacher)
    {root}/teacher/                         the teacher train_teacher.py writes
    {root}/report/                          make_report.py's tables and plots
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DATASET_NAME = "wikitext2"
LATEST = "latest.pt"
BEST = "best.pt"
LAYER_DROP_MODEL = "layer_drop"
BLOCK_RUN_KINDS = ("block", "till_end", "merge", "conditioned")
_BLOCK_RUN = re.compile(rf"^({'|'.join(BLOCK_RUN_KINDS)})_(\d+)_(\d+)_(\d+)(-[a-z0-9_.]+)?$")
_FFN_RUN = re.compile(r"^ffn_(\d+)_(\d+)(-[a-z0-9_.]+)?$")


def parse_ffn_run(name: str) -> tuple[int, int, str] | None:
    """``(block, width, variant)`` of a feed-forward student's run folder name (:meth:`Storage.ffn_run`), or None."""
    match = _FFN_RUN.match(name)
    return None if match is None else (int(match[1]), int(match[2]), match[3] or "")


@dataclass(frozen=True)
class BlockRun:
    """What a block run's folder name says: its kind, block, student shape and variant (``""`` or ``-...``)."""

    kind: str
    block: int
    heads: int
    d_k: int
    variant: str = ""

    @property
    def name(self) -> str:
        # the original repository's order: d_k before heads
        return f"{self.kind}_{self.block}_{self.d_k}_{self.heads}{self.variant}"

    @classmethod
    def parse(cls, name: str) -> BlockRun | None:
        """The fields of a block run folder name, or None for any other name."""
        match = _BLOCK_RUN.match(name)
        if match is None:
            return None
        kind, block, d_k, heads, variant = match.groups()
        return cls(kind, int(block), int(heads), int(d_k), variant or "")


def run_output(folder: Path) -> Path:
    """What a block run gives the stages after it: ``best.pt``, its epoch of lowest validation loss, or
    ``latest.pt`` for a run that has none (made before best.pt was kept, or resumed from such a run and never
    bettered since: then its last epoch is what there is)."""
    best = folder / BEST
    return best if best.exists() else folder / LATEST


class Storage:
    """Paths under one storage directory (nothing is created here)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def runs(self) -> Path:
        return self.root / "checkpoints" / DATASET_NAME

    def run(self, name: str) -> Path:
        return self.runs / name

    def block_run(self, kind: str, block: int, heads: int, d_k: int, variant: str = "") -> Path:
        return self.run(BlockRun(kind, block, heads, d_k, variant).name)

    def block_checkpoint(self, kind: str, block: int, heads: int, d_k: int, variant: str = "") -> Path:
        """The rolling checkpoint of a block run."""
        return self.block_run(kind, block, heads, d_k, variant) / LATEST

    def block_output(self, kind: str, block: int, heads: int, d_k: int, variant: str = "") -> Path:
        """The trained block a block run gives the stages after it (:func:`run_output`)."""
        return run_output(self.block_run(kind, block, heads, d_k, variant))

    def ffn_run(self, block: int, width: int, variant: str = "") -> Path:
        """A feed-forward student's run: ``ffn_{block}_{width}{variant}``."""
        return self.run(f"ffn_{block}_{width}{variant}")

    def ffn_output(self, block: int, width: int, variant: str = "") -> Path:
        """The trained feed-forward a student's run gives the stages after it (:func:`run_output`)."""
        return run_output(self.ffn_run(block, width, variant))

    def block_runs(self, kind: str) -> list[tuple[BlockRun, Path]]:
        """Every run folder of ``kind`` (every variant) with its parsed name, sorted by name."""
        found = [(BlockRun.parse(path.name), path) for path in sorted(self.runs.glob(f"{kind}_*"))]
        return [(run, path) for run, path in found if run is not None and run.kind == kind]

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model(self, name: str) -> Path:
        return self.models / name

    def retrained_model(
        self, heads: int, d_k: int, variant: str = "", source: str = "block", ffn_width: int | None = None
    ) -> Path:
        """Where the notebook saves the model assembled from the ``source`` runs (block or till_end) of
        ``variant``, with the feed-forward students of width ``ffn_width`` when it takes them (``_ffn{width}``)."""
        kind = "" if source == "block" else f"_{source}"
        feed_forward = "" if ffn_width is None else f"_ffn{ffn_width}"
        return self.model(f"retrained{kind}_{d_k}_{heads}{feed_forward}{variant}")

    def merged_model(self, heads: int, d_k: int, source: str = "merge", variant: str = "") -> Path:
        """Where finetune_fully_merged.py saves the fully merged model (``source``: merge or conditioned)."""
        suffix = "" if source == "merge" else f"_{source}"
        return self.model(f"merged_{d_k}_{heads}{suffix}{variant}")

    def pruned_model(self, heads: int, d_k: int, per_layer: bool) -> Path:
        """Where prune_heads.py saves a head-pruned teacher (``_global``: heads chosen across layers)."""
        return self.model(f"pruned_{d_k}_{heads}" + ("" if per_layer else "_global"))

    def neuron_pruned_model(
        self, width: int, per_layer: bool, reconstruction: str | None, heads: int | None = None
    ) -> Path:
        """Where prune_neurons.py saves a teacher with ``width`` feed-forward neurons per layer (``_global``:
        chosen across layers; ``_ls``: output projections reconstructed by least squares, ``_ls_validated`` by the
        validated least squares; ``_heads{H}``: its attention pruned to H heads per layer too)."""
        suffix = {None: "", "least_squares": "_ls"}.get(reconstruction, f"_ls_{reconstruction}")
        name = f"pruned_ffn_{width}" + ("" if per_layer else "_global") + suffix
        return self.model(name + ("" if heads is None else f"_heads{heads}"))

    def layer_drop_model(self, rule: str = "alternate", variant: str = "") -> Path:
        """The layer-drop baseline: ``layer_drop`` (every second layer, the original repository's) or
        ``layer_drop_{rule}``, and the variant of its healing (``-t4``)."""
        name = LAYER_DROP_MODEL if rule == "alternate" else f"{LAYER_DROP_MODEL}_{rule}"
        return self.model(name + variant)

    def results(self, name: str) -> Path:
        return self.root / "results" / name

    @property
    def all_results(self) -> list[Path]:
        """Every evaluation's metrics.json."""
        return sorted((self.root / "results").glob("*/metrics.json"))

    def fully_merged_results(self, heads: int, d_k: int, variant: str = "") -> Path:
        return self.results(f"fully_merged_{d_k}_{heads}{variant}")

    def cache(self, name: str) -> Path:
        return self.root / "cache" / name

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def report(self) -> Path:
        return self.root / "report"
