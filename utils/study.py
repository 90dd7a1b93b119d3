"""A study as data: a YAML file under ``studies/`` read and checked, and its plan, the stages the workflow runs.

A study names its teacher, its data scale, seeds, budgets (shares of the teacher's encoder FLOPs per token),
the model families to build at each budget, the healings every model gets, the comparisons its report answers
and its goals (see ``studies/round2.yaml``, every key explained). :class:`Plan` turns it into :class:`Stage` s: one
call of one top-level script each, with the stages it needs, so a workflow engine (``workflow/Snakefile``)
runs them in order, here or on a cluster, and skips what is done. The heads and feed-forward widths of each
family at each budget come from the teacher's shape by :func:`models.cost.width_for_budget`, so one study file
plans the right models for the offline teacher and for ``bert-base-uncased``. Variants of a study's recipe are
named inside it (``variants``: a longer healing, bf16, other students); a piece that fits a session or a cluster
allocation is a stage's stamp as a Snakemake target, not another file.

Under the study's root (the workflow's ``storage``)::

    {root}/teacher/                   the teacher, when the study trains one
    {root}/seed{N}/                   one storage directory per seed (utils/storage.py's layout)
    {root}/stages/{seed}/{kind}/{name}.done    a finished stage (the engine's targets)
    {root}/logs/, {root}/benchmarks/          each stage's output and its time (the engine's)
    {root}/data/models.csv, comparisons.csv    the study's results as tidy tables (make_report.py --study)
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

from utils.errors import UserError
from utils.files import atomic_write
from utils.storage import Storage

# models.cost and utils.runs are imported where they are used: they load torch, and a workflow job on a cluster
# node reads the saved plan (Plan.load) without planning again, so importing this module stays cheap.

# Teacher shapes a study can plan with before any weights are at hand (``teacher: {shape: bert-base}``).
SHAPES = {
    "bert-base": {"layers": 12, "hidden": 768, "heads": 12, "ffn": 3072},
    "bert-large": {"layers": 24, "hidden": 1024, "heads": 16, "ffn": 4096},
    "minilm": {"layers": 6, "hidden": 384, "heads": 12, "ffn": 1536},
}
BUDGET_SLACK = 0.02  # a planned model within 2 points of its budget counts at it (widths are rounded)
SHARED = "shared"  # the "seed" of stages every seed shares (the teacher, the report)
FLOPS, OPENINGS = "flops", "openings"  # folders of a study's root beside its seeds: counted FLOPs, test openings
VALIDATION, TEST = "validation", "test"  # each seed's evaluations: the split each side's best is chosen on, the one
# it is reported on, opened once every model of every seed has its validation evaluation
VARIANT_MARK = "@"  # between a model's name and its variant's
BEST = "best"  # a study's comparison of each budget's best sitra model with its best field model
WIKITEXT2_TRAIN_SENTENCES = 75_720  # the training split's sentences (utils.data), for a bill before any data is read


@dataclass(frozen=True)
class TeacherShape:
    """What the plan needs of the teacher: layers, hidden size, heads (of ``hidden / heads`` each), feed-forward."""

    layers: int
    hidden: int
    heads: int
    ffn: int

    @property
    def d_k(self) -> int:
        return self.hidden // self.heads

    def __str__(self) -> str:
        return f"{self.layers} layers, hidden {self.hidden}, {self.heads} heads, feed-forward {self.ffn}"

    @classmethod
    def of_config(cls, config) -> TeacherShape:
        return cls(config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size)

    def encoder_flops(self, seq_len: int) -> int:
        from models.cost import flops_per_token

        return self.layers * flops_per_token(self.hidden, self.heads, self.d_k, self.ffn, seq_len)

    def share(self, seq_len: int, layers: int, heads: int, ffn: int) -> float:
        """The encoder FLOPs per token of ``layers`` layers of ``heads`` x d_k and ``ffn``, as a share of this."""
        from models.cost import flops_per_token

        return layers * flops_per_token(self.hidden, heads, self.d_k, ffn, seq_len) / self.encoder_flops(seq_len)

    def width(self, budget: float, seq_len: int, heads: int, layers: int | None = None) -> int:
        from models.cost import width_for_budget

        return width_for_budget(
            budget, self.layers, self.hidden, self.heads, self.d_k, self.ffn, seq_len, layers, heads
        )


@dataclass(frozen=True)
class Stage:
    """One call of one top-level script: ``kind`` is the workflow rule that runs it, ``seed`` the storage it
    writes (``seed42``, or :data:`SHARED`), ``name`` unique within the two; ``needs``: the stages before it."""

    kind: str
    seed: str
    name: str
    command: tuple[str, ...]
    needs: tuple[tuple[str, str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kind, self.seed, self.name


@dataclass(frozen=True)
class PlannedModel:
    """A model of the study at one budget: its family, the share of the teacher's FLOPs it lands at, what it
    is made of (``recipe``, a compound recipe, or ``merged``: a merged-pairs source), and its shape."""

    name: str
    family: str
    method: str
    budget: float
    flops_share: float
    shape: dict
    recipe: dict | None = None
    merged: dict | None = None
    learned: dict | None = None  # a model whose units are learned (CoFi): prune_cofi.py's flags

    variant: str = ""  # the study's variant it belongs to ("": the study's own recipe), the end of its name

    def healed(self, healing: str) -> str:
        """The name of this model healed by the study's healing ``healing``."""
        return healed_name(self.name, healing)


def healed_name(model: str, healing: str) -> str:
    """The name of the study's model ``model`` healed by its healing ``healing`` (what the heal stage saves): the
    healing before the variant, ``sitra_heads_33_layerwise@heal_all``."""
    built, at, variant = model.partition(VARIANT_MARK)
    return f"{built}_{healing}{at}{variant}"


def variant_name(name: str, variant: str) -> str:
    """A model's name in ``variant``: ``sitra_heads_33@heal_all`` (the study's own recipe: no mark), so that one
    (seed, name) names one model across every variant of a study and every study's data."""
    return f"{name}{VARIANT_MARK}{variant}" if variant else name


def seed_folder(seed: int | str, variant: str = "") -> str:
    """The folder of a seed's runs under a study's root (and under its committed ``raw/``): ``seed42``, and a
    variant's ``heal_all/seed42``."""
    return f"{variant}/seed{seed}" if variant else f"seed{seed}"


# -- the study file ---------------------------------------------------------------------------------------------
DATA_DEFAULTS = {
    "train_sentences": None,  # training sentences in the store every student learns from (None: all)
    "student_epochs": 1,  # with student_stop_patience: the cap
    "student_stop_patience": None,  # each student stops once its validation loss stops falling (--stop_patience)
    "student_stop_min_delta": None,  # the share of its best the loss must fall by (--stop_min_delta; None: its default)
    "check_sentences": 300,  # validation sentences each run reports on (a diagnostic, not a choice)
    "heal_sentences": 4000,  # training sentences each healing learns from (None: all)
    "heal_epochs": 1,
    "test_share": 1.0,  # the share of the test split evaluated (the same masks for every model)
    "validation_share": 1.0,  # the share of the validation split each side's best is chosen on
    "latency_repeats": 0,  # timed calls per latency figure in the evaluations (0: none)
    # the seed of the validation and test masks, the same under every seed of the study (and every study): each
    # seed's models are then evaluated on the same masked tokens, so they pair across seeds and studies
    "mask_seed": 42,
    "seq_len": 40,
    "batch_size": None,  # None: each script's default
    # every training stage's autocast (--precision); None: each script's auto, bf16 on a GPU and on a CPU that
    # multiplies bf16 natively, fp32 on other CPUs (each run records which). fp32 makes every machine's run the same
    # experiment (the evaluations and the store are fp32 either way)
    "precision": None,
}


def from_root(root: Path, path: str) -> str:
    """A study file's path: one starting with ``./`` or ``../`` is read from the study's root (``../round3/teacher``:
    a sibling study's trained teacher, wherever the two roots are); any other is as given (a folder or a hub id)."""
    return str((Path(root) / path).resolve()) if path.startswith(("./", "../")) else path


def _require(condition: bool, message: str, where: str) -> None:
    if not condition:
        raise UserError(f"{where}: {message}")


# data keys that only the healing and the evaluations read: a variant that changes no other data key (and no
# family's options) builds its models from the study's own store and students, in the study's seed folders
HEALING_DATA = ("heal_sentences", "heal_epochs", "validation_share", "test_share", "latency_repeats", "mask_seed")


@dataclass(frozen=True)
class Variant:
    """One recipe of a study: its own (``name`` "") or a named variant's, the study's keys with the variant's
    changes (``data`` key by key; ``healing``, ``families``, ``budgets``, ``seeds`` replaced)."""

    name: str
    data: dict
    seeds: list[int]
    budgets: list[float]
    families: dict[str, dict]
    healing: dict
    builds_apart: bool = False  # its store, students and models apart from the study's (it changes what they read)


@dataclass
class Study:
    """A study file, checked (each error names the file and the key)."""

    path: Path
    name: str
    teacher: dict
    data: dict
    seeds: list[int]
    budgets: list[float]
    families: dict[str, dict]
    healing: dict
    comparisons: list[list[str]]  # pairs of families (family or family@variant): the Holm family, with best
    resources: dict = field(default_factory=dict)
    goals: dict = field(default_factory=dict)  # budget -> the share of the teacher's test top-1 to keep
    variants: dict[str, Variant] = field(default_factory=dict)  # "" (the study's own recipe) first, then each named
    compares_best: bool = False  # comparisons has "best": each budget's best of each side, in the Holm family

    @classmethod
    def load(cls, path: str | Path) -> Study:
        """The study file at ``path``, checked against the schema (types, ranges, unknown and repeated keys) and
        then what a schema cannot say (a family's options against its method's, comparisons and goals against the
        families and budgets); each refusal one line naming the file, its line where known, the key and value."""
        from utils import study_file

        path = Path(path)
        raw, lines = study_file.read(path)
        study_file.check(raw, lines, path, schema_enums())
        data = {**DATA_DEFAULTS, **(raw.get("data") or {})}
        budgets, seeds, families = raw["budgets"], raw.get("seeds", [42]), raw["families"]
        for name, family in families.items():
            at = study_file.where(path, lines, ["families", name])
            _check_family(name, family, budgets, f"{at}: families.{name}")
        comparisons = raw.get("comparisons") or []
        teacher = raw["teacher"]
        _require(
            len({"path", "train"} & set(teacher)) == 1,
            "teacher: expected exactly one of 'path' (a folder or hub id) and 'train' (train_teacher.py's flags)",
            study_file.where(path, lines, ["teacher"]),
        )
        healing = raw.get("healing") or {"kl": {}}
        goals = {float(budget): goal for budget, goal in (raw.get("goals") or {}).items()}
        _require(set(goals) <= set(budgets), "goals: a share of the teacher's top-1 per budget of the study",
                 study_file.where(path, lines, ["goals"]))  # fmt: skip
        variants = {"": Variant("", data, seeds, budgets, families, healing)}
        for name, changes in (raw.get("variants") or {}).items():
            variants[name] = _variant(
                name, changes or {}, variants[""], study_file.where(path, lines, ["variants", name])
            )
        compares_best = BEST in comparisons
        comparisons = [pair for pair in comparisons if pair != BEST]
        for index, pair in enumerate(comparisons):
            at = study_file.where(path, lines, ["comparisons", index])
            _require(pair[0] != pair[1], f"comparisons: {pair!r} compares a family with itself", at)
            for entry in pair:
                family, _, variant = entry.partition(VARIANT_MARK)
                _require(variant in variants, f"comparisons: {entry!r} names no variant of the study", at)
                _require(family in variants[variant].families, f"comparisons: {pair!r}: no family {family} in "
                         f"{'variant ' + variant if variant else 'the study'}", at)  # fmt: skip
        return cls(path, raw.get("name", path.stem), teacher, data, seeds, budgets, families, healing, comparisons,
                   raw.get("resources") or {}, goals, variants, compares_best)  # fmt: skip


def _variant(name: str, changes: dict, own: Variant, where: str) -> Variant:
    """The variant ``name`` of a study whose own recipe is ``own``: what ``changes`` gives replacing its key (data
    key by key); the families it names must be the study's and its budgets the study's."""
    families = changes.get("families", list(own.families))
    unknown = [family for family in families if family not in own.families]
    _require(not unknown, f"variants.{name}.families: {unknown} are not families of the study", where)
    budgets = changes.get("budgets", own.budgets)
    _require(set(budgets) <= set(own.budgets), f"variants.{name}.budgets: each must be one of the study's", where)
    data = {**own.data, **(changes.get("data") or {})}
    masks = [key for key in ("mask_seed", "validation_share", "test_share") if data[key] != own.data[key]]
    _require(
        not masks,
        f"variants.{name}.data: {masks} would evaluate it on other masks than the study's (its models "
        "are compared with the study's, and each side's best chosen among them, on the same masks)",
        where,
    )
    seeds = changes.get("seeds", own.seeds)
    _require(set(seeds) & set(own.seeds), f"variants.{name}.seeds: {seeds} shares no seed with the study's "
             f"{own.seeds} (each side's best is chosen on the seeds every candidate has)", where)  # fmt: skip
    apart = any(data[key] != own.data[key] for key in data if key not in HEALING_DATA)
    return Variant(name, data, seeds, budgets,
                   {family: own.families[family] for family in families}, changes.get("healing") or own.healing,
                   apart)  # fmt: skip


def schema_enums() -> dict[tuple, list]:
    """The registries the study schema's enums come from (``utils.study_file.schema``)."""
    from models.methods import DROP, SIMILARITY
    from utils.device import PRECISIONS
    from utils.pruning import RECONSTRUCTION

    family = ("$defs", "family", "properties")
    # a drop rule that measures similarities on data cannot be planned ahead: the plan must know the kept layers
    rules = [name for name in DROP.names() if SIMILARITY not in DROP[name].needs]
    return {
        ("properties", "teacher", "properties", "shape"): list(SHAPES),
        ("properties", "data", "properties", "precision"): [None, *PRECISIONS],
        ("properties", "resources", "propertyNames"): ["default", *KINDS, "report"],
        (*family, "method"): list(METHODS),
        (*family, "rule"): rules,
        (*family, "reconstruct", "oneOf", 1): RECONSTRUCTION.names(),
    }


def _check_family(name: str, family: dict, budgets: list[float], where: str) -> None:
    _require(name.replace("_", "").isalnum(), "a family name is letters, digits and _", where)
    known = "; ".join(f"{method.name} ({method.summary})" for method in METHODS.values())
    _require(isinstance(family, dict) and family.get("method") in METHODS, f"method: one of {known}", where)
    method = METHODS[family["method"]]
    unknown = set(family) - {"method", "budgets", *method.options}
    _require(not unknown, f"{family['method']} takes no {sorted(unknown)} (it takes {sorted(method.options)})", where)
    _require(set(family.get("budgets", budgets)) <= set(budgets), "budgets: each must be one of the study's", where)
    for option in ("attention_share", "depth"):  # a mapping of shares gives one at each budget, or a default
        shares = family.get(option)
        if isinstance(shares, dict) and "default" not in shares:
            missing = [budget for budget in family.get("budgets", budgets) if budget not in shares]
            _require(not missing, f"{option}: no share for budget {missing[:1]} (give it, or a default)", where)


def _reconstruct(options: dict, where: str) -> bool | str:
    """A family's ``reconstruct`` as its recipes spell it: true for least squares (the committed studies'
    recipes), false for none, else the name of a method of utils.pruning.RECONSTRUCTION."""
    from utils.pruning import reconstruction_of

    method = reconstruction_of(options.get("reconstruct"), where)
    return method == "least_squares" if method in (None, "least_squares") else method


# -- methods: how a family plans its model at one budget ----------------------------------------------------------
@dataclass(frozen=True)
class PlanMethod:
    """A registered way to build a family's models: its options, the function that plans one budget, and whose
    method it is (``sitra``'s or ``field``'s: a report picks each side's best at each budget)."""

    name: str
    options: tuple[str, ...]
    plan: Callable[[TeacherShape, int, str, dict, float], PlannedModel]
    summary: str
    side: str


METHODS: dict[str, PlanMethod] = {}


def register(name: str, side: str, options: tuple[str, ...], summary: str):
    def decorate(function):
        METHODS[name] = PlanMethod(name, options, function, summary, side)
        return function

    return decorate


def _share_at(value, budget: float, where: str) -> float:
    """A share (of heads or layers) given as a number or a mapping budget -> share with a ``default``."""
    if isinstance(value, dict):
        value = value.get(budget, value.get("default"))
    _require(isinstance(value, int | float) and 0 < value <= 1, f"expected a share in (0, 1] at {budget}", where)
    return float(value)


def _kept_heads(shape: TeacherShape, family: dict, budget: float) -> int:
    return max(1, round(shape.heads * _share_at(family.get("attention_share", 1.0), budget, "attention_share")))


def _model(family: str, method: str, budget: float, share: float, shape: dict, **made_of) -> PlannedModel:
    return PlannedModel(f"{family}_{round(100 * budget)}", family, method, budget, share, shape, **made_of)


def _cut_model(
    shape: TeacherShape,
    seq_len: int,
    family: str,
    method: str,
    options: dict,
    budget: float,
    attention_part: Callable[[int], dict],
    feed_forward_part: Callable[[int], dict],
) -> PlannedModel:
    """A model of every layer with a share of the heads and the feed-forward width its budget leaves: the recipe
    parts that make the attention (``attention_part(heads)``) and the feed-forward (``feed_forward_part(width)``)
    smaller, each only where it is smaller than the teacher's."""
    heads = _kept_heads(shape, options, budget)
    width = shape.width(budget, seq_len, heads)
    recipe = {
        **(attention_part(heads) if heads < shape.heads else {}),
        **(feed_forward_part(width) if width < shape.ffn else {}),
    }
    share = shape.share(seq_len, shape.layers, heads, width)
    return _model(family, method, budget, share, {"heads": heads, "ffn": width}, recipe=recipe)


@register("students", "sitra", ("attention_share", "attention", "feed_forward"),
          "sitra: attention students with a share of the heads and feed-forward students of the width the budget "
          "leaves, distilled on the teacher's activations, in one compound model")  # fmt: skip
def plan_students(shape: TeacherShape, seq_len: int, family: str, options: dict, budget: float) -> PlannedModel:
    def attention(heads: int) -> dict:
        return {"attention": {"heads": heads, "d_k": shape.d_k, "flags": options.get("attention", {})}}

    def feed_forward(width: int) -> dict:
        return {"feed_forward": {"width": width, "flags": options.get("feed_forward", {})}}

    return _cut_model(shape, seq_len, family, "students", options, budget, attention, feed_forward)


@register("pruning", "field", ("attention_share", "reconstruct"),
          "the field: the teacher's least important heads and neurons removed (neurons optionally reconstructed: "
          "reconstruct true for least squares, or a reconstruction's name)")  # fmt: skip
def plan_pruning(shape: TeacherShape, seq_len: int, family: str, options: dict, budget: float) -> PlannedModel:
    def neurons(width: int) -> dict:
        return {"prune_neurons": {"width": width, "reconstruct": _reconstruct(options, family)}}

    return _cut_model(
        shape, seq_len, family, "pruning", options, budget, lambda heads: {"prune_heads": {"heads": heads}}, neurons
    )


@register("layer_drop", "field", ("rule", "depth", "reconstruct"),
          "the field: a share of the layers kept (the others dropped by rule), their feed-forwards pruned to the "
          "width the budget leaves")  # fmt: skip
def plan_layer_drop(shape: TeacherShape, seq_len: int, family: str, options: dict, budget: float) -> PlannedModel:
    kept = max(1, round(shape.layers * _share_at(options.get("depth", 0.5), budget, "depth")))
    width = shape.width(budget, seq_len, shape.heads, kept)
    recipe = {"drop": {"rule": options.get("rule", "top"), "count": shape.layers - kept}}
    if width < shape.ffn:
        recipe["prune_neurons"] = {
            "width": width,
            "reconstruct": _reconstruct(options, family),
            "layers": _kept_layers(recipe["drop"]["rule"], shape.layers, shape.layers - kept),
        }
    share = shape.share(seq_len, kept, shape.heads, width)
    return _model(family, "layer_drop", budget, share, {"layers": kept, "ffn": width}, recipe=recipe)


def _kept_layers(rule: str, layers: int, count: int) -> list[int]:
    from models import layers_to_drop

    dropped = set(layers_to_drop(rule, layers, count))
    return [layer for layer in range(layers) if layer not in dropped]


def _merged_pairs(shape: TeacherShape, seq_len: int, family: str, options: dict, budget: float, source: str):
    layers = shape.layers - shape.layers // 2
    merged = {"source": source, "flags": options.get("merge", {"merge_init": "first"})}
    share = shape.share(seq_len, layers, shape.heads, shape.ffn)
    method = "merged_pairs" if source == "merge" else "conditioned_chain"
    return _model(family, method, budget, share, {"layers": layers}, merged=merged)


@register("merged_pairs", "sitra", ("merge",), "sitra: each pair of adjacent layers distilled into one layer")
def plan_merged_pairs(shape: TeacherShape, seq_len: int, family: str, options: dict, budget: float) -> PlannedModel:
    return _merged_pairs(shape, seq_len, family, options, budget, "merge")


@register("conditioned_chain", "sitra", ("merge",),
          "sitra: the merged pairs trained in order, each on the merged layers before it")  # fmt: skip
def plan_chain(shape: TeacherShape, seq_len: int, family: str, options: dict, budget: float) -> PlannedModel:
    return _merged_pairs(shape, seq_len, family, options, budget, "conditioned")


@register("cofi", "field", ("epochs", "mask_lr", "lagrangian_warmup"),
          "the field: CoFi's learned structured pruning, hard-concrete masks over the heads and neurons learned with "
          "layer-wise distillation under a Lagrangian holding the budget (prune_cofi.py's epochs, mask_lr, "
          "lagrangian_warmup)")  # fmt: skip
def plan_cofi(shape: TeacherShape, seq_len: int, family: str, options: dict, budget: float) -> PlannedModel:
    flags = {name: value for name, value in options.items() if name != "method" and name != "budgets"}
    return _model(family, "cofi", budget, budget, {"learned": "heads and neurons"}, learned=flags)


def plan_models(study: Study, shape: TeacherShape) -> tuple[list[PlannedModel], list[str]]:
    """Every family's model at every budget it reaches (within :data:`BUDGET_SLACK`) in every variant of the study
    (named ``{family}_{budget}@{variant}``), and a line for each budget a family does not reach. A family that
    names its ``budgets`` must reach each: else a UserError."""
    models, skipped = [], []
    for variant in study.variants.values() or [Variant("", study.data, study.seeds, study.budgets, study.families,
                                                       study.healing)]:  # fmt: skip
        for family, options in variant.families.items():
            method = METHODS[options["method"]]
            for budget in [budget for budget in options.get("budgets", variant.budgets) if budget in variant.budgets]:
                model = method.plan(shape, variant.data["seq_len"], family, options, budget)
                model = replace(model, name=variant_name(model.name, variant.name), variant=variant.name)
                if abs(model.flops_share - budget) <= BUDGET_SLACK:
                    models.append(model)
                    continue
                why = f"{family} at {budget:.0%}: its model lands at {model.flops_share:.1%} of the teacher's FLOPs"
                _require("budgets" not in options, why, f"{study.path}: families.{family}")
                if why not in skipped:
                    skipped.append(why)
    names = [model.name for model in models]
    twice = sorted({name for name in names if names.count(name) > 1})
    _require(not twice, f"two models named {twice} (budgets that round to one percent)", f"{study.path}: budgets")
    return models, skipped


# -- the stages ---------------------------------------------------------------------------------------------------
def variant_of_flags(kind: str, values: dict) -> str:
    """:func:`utils.runs.variant_of_flags`: the folder suffix of the ``kind`` runs these flag values train."""
    from utils.runs import variant_of_flags as variant

    return variant(kind, values)


def _flag_args(values: dict) -> list[str]:
    """``{"student_init": "heads", "loss_on_logits": True}`` -> ``--student_init heads --loss_on_logits``."""
    args = []
    for name, value in values.items():
        if value is True:
            args.append(f"--{name}")
        elif value not in (False, None):
            args += [f"--{name}", str(value)]
    return args


class Plan:
    """The stages of a study under ``root``: built once from the study file, read by the workflow's rules."""

    def __init__(self, study: Study, root: str | Path, python: str, data_dir: str | None = None, shape=None):
        self.study, self.root, self.python = study, Path(root).resolve(), python
        _check_writable(self.root)
        self.repo = Path(__file__).resolve().parents[1]
        self.shape = shape or teacher_shape(study, self.root)
        self.models, self.skipped = plan_models(study, self.shape)
        self.data_dir, self.resource_table = data_dir, study.resources
        self.stages: dict[tuple[str, str, str], Stage] = {}
        teacher = self._teacher_stage()
        for variant in study.variants.values():
            for seed in variant.seeds:
                self._seed_stages(seed, teacher, variant)
        evaluations = [key for key in self.stages if key[0] == "evaluate"]
        validated = tuple(key for key in evaluations if key[2] == VALIDATION)
        for key in evaluations:  # the test split is opened once every planned model is evaluated on validation
            if key[2] == TEST:
                self.stages[key] = replace(self.stages[key], needs=(*self.stages[key].needs, *validated))
        report = ("--storage_directory", self.root, "--study", study.path.resolve())
        self.report = Stage("report", SHARED, "report", (str(self.repo / "make_report.py"), *map(str, report)),
                            tuple(evaluations))  # fmt: skip
        for stage in (*self.stages.values(), self.report):
            check_command(stage, study.path)

    # where things are ------------------------------------------------------------------------------------------
    def storage(self, seed: int, variant: str = "") -> Storage:
        """Where ``variant``'s models of ``seed`` are healed and evaluated (the study's own: ``{root}/seed42``)."""
        return Storage(self.root / seed_folder(seed, variant))

    def runs(self) -> list[tuple[str, int]]:
        """Every (variant, seed) the study runs, its own recipe's first."""
        return [(name, seed) for name, variant in self.study.variants.items() for seed in variant.seeds]

    def variant_models(self, variant: str) -> list[PlannedModel]:
        return [model for model in self.models if model.variant == variant]

    def _built_in(self, seed: int, variant: Variant) -> str:
        """The seed folder of ``variant``'s store, students and models: the study's own, unless it changes what they
        read (``builds_apart``): then its own, beside its healings."""
        return seed_folder(seed, variant.name if variant.builds_apart else "")

    def built_name(self, model: PlannedModel) -> str:
        """The name ``model`` is built under (before healing): the study's own model's, where its variant shares the
        study's builds (one build, healed by each variant), else its own."""
        return model.name if self.study.variants[model.variant].builds_apart else model.name.split(VARIANT_MARK)[0]

    @property
    def teacher(self) -> str:
        if self.study.teacher.get("train") is not None:
            return str(Storage(self.root).teacher)
        return from_root(self.root, self.study.teacher["path"])

    def stamp(self, key: tuple[str, str, str]) -> Path:
        kind, seed, name = key
        return self.root / "stages" / seed / kind / f"{name}.done"

    def flops_file(self, key: tuple[str, str, str]) -> Path:
        """Where the runs of a stage record the FLOPs they trained (utils.flops, ``$SITRA_FLOPS_FILE``)."""
        kind, seed, name = key
        return self.root / FLOPS / seed / kind / f"{name}.json"

    def openings(self, seed: str) -> Path:
        """When the workflow opened ``seed``'s test split, and under which study file (utils.study_report)."""
        return self.root / OPENINGS / seed / f"{TEST}.log"

    @property
    def data_files(self) -> dict[str, Path]:
        """The study's tidy tables (make_report.py --study writes them)."""
        tables = {name: self.root / "data" / f"{name}.csv" for name in ("models", "comparisons")}
        return {**tables, "about": self.root / "data" / "study.json"}  # the study's goals, data scale, seeds

    @property
    def students_data(self) -> Path:
        """The students' validation curves (make_report.py --study writes it where the study trains students)."""
        return self.root / "data" / "students.csv"

    # building -----------------------------------------------------------------------------------------------
    def _add(self, kind: str, seed: str, name: str, script: str, args, needs=()) -> tuple[str, str, str]:
        """A stage, once: variants that share the study's builds plan its store, students and models again, alike."""
        stage = Stage(kind, seed, name, (str(self.repo / script), *map(str, args)), tuple(needs))
        planned = self.stages.setdefault(stage.key, stage)
        if planned.command != stage.command:  # two stages under one name would run one in place of the other
            raise UserError(f"{self.study.path}: two {kind} stages named {seed}/{name} with other flags")
        return stage.key

    def _common(self, seed: int, folder: str, data: dict, training: bool = False, seed_flag=None) -> list[str]:
        """The flags every stage of ``seed`` in the seed folder ``folder`` shares; ``seed_flag``: another ``--seed``
        (the evaluations' masks)."""
        args = ["--teacher", self.teacher, "--storage_directory", self.root / folder]
        args += ["--seed", seed if seed_flag is None else seed_flag]
        args += ["--seq_len", data["seq_len"]] + (["--data_dir", self.data_dir] if self.data_dir else [])
        if training:
            args += ["--batch_size", data["batch_size"]] if data["batch_size"] else []
            args += ["--precision", data["precision"]] if data["precision"] else []
        return args

    def _teacher_stage(self) -> list:
        train = self.study.teacher.get("train")
        if train is None:
            return []
        args = _flag_args(train) + ["--output_dir", Storage(self.root).teacher, "--storage_directory", self.root]
        precision = self.study.data["precision"]  # the teacher is trained in the study's precision too, unless its
        args += ["--precision", precision] if precision and "precision" not in train else []  # train says its own
        args += ["--seq_len", self.study.data["seq_len"]] + (["--data_dir", self.data_dir] if self.data_dir else [])
        return [self._add("teacher", SHARED, "teacher", "train_teacher.py", args)]

    @staticmethod
    def _at_most(data: dict, sentences: str) -> list:
        """``--max_sentences`` from the data key ``sentences`` (train_sentences: the store and every student trained
        from it; heal_sentences: each healing); none when the study gives none: every training sentence."""
        cap = data[sentences]
        return ["--max_sentences", cap] if cap else []

    def _students(self, seed: int, variant: Variant, args, from_store: bool = True) -> list:
        """The flags of a script that trains students of every layer: from the seed's teacher store, or (the
        conditioned chain) computing each pair's input through the merged pairs before it, every pair in order."""
        data = variant.data
        store, every_layer, chain = (["--teacher_store"], ["--block", "all"], []) if from_store else ([], [], ["--all"])
        return [
            *self._common(seed, self._built_in(seed, variant), data, training=True),
            *self._at_most(data, "train_sentences"), *store, "--eval_sentences", data["check_sentences"],
            *every_layer, "--epochs", data["student_epochs"], *self._student_stop(data), *args, *chain,
        ]  # fmt: skip

    @staticmethod
    def _student_stop(data: dict) -> list:
        """The students' stopping rule: none (every epoch of student_epochs), or ``--stop_patience``."""
        if not data["student_stop_patience"]:
            return []
        delta = data["student_stop_min_delta"]
        return ["--stop_patience", data["student_stop_patience"], *(["--stop_min_delta", delta] if delta else [])]

    def _seed_stages(self, seed: int, teacher: list, variant: Variant) -> None:
        data, models = variant.data, self.variant_models(variant.name)
        built_in, tag = self._built_in(seed, variant), seed_folder(seed, variant.name)
        store_args = self._common(seed, built_in, data) + self._at_most(data, "train_sentences")
        store = self._add("store", built_in, "store", "build_teacher_store.py", store_args, teacher)
        # every model needs the teacher it is cut from, a pruned or dropped one nothing else (no students, no store)
        built = [self._model_stage(seed, variant, model, [*teacher, *self._student_stages(seed, variant, model, store)])
                 for model in models]  # fmt: skip
        if not models:  # every family is left out at every budget (describe says where): nothing to heal
            return
        healed = [self._heal_stage(seed, variant, built, healing, flags) for healing, flags in variant.healing.items()]
        outputs = [self.storage(seed, variant.name).model(model.healed(healing)) for healing in variant.healing
                   for model in models]  # fmt: skip
        for split, share in ((VALIDATION, data["validation_share"]), (TEST, data["test_share"])):
            # every healed model on the same masks: the validation split to choose on, the test split to report
            args = [*self._common(seed, tag, data, seed_flag=data["mask_seed"]), "--split", split]
            args += ["--percentage_data", share, "--reference", "none", "--latency_repeats", data["latency_repeats"]]
            args += ["--evaluation", split, "--models", *outputs]
            self._add("evaluate", tag, split, "eval_retrained_12.py", args, healed)

    def _student_stages(self, seed: int, variant: Variant, model: PlannedModel, store) -> list:
        tag, recipe = self._built_in(seed, variant), model.recipe or {}
        stages = []
        if "attention" in recipe:
            part = recipe["attention"]
            name = f"{part['heads']}x{part['d_k']}{variant_of_flags('block', part['flags'])}"
            shape = ["--block_heads", part["heads"], "--block_d_k", part["d_k"], *_flag_args(part["flags"])]
            args = self._students(seed, variant, shape)
            stages.append(self._add("attention_students", tag, name, "retrain_single_block.py", args, [store]))
        if "feed_forward" in recipe:
            part = recipe["feed_forward"]
            name = f"{part['width']}{variant_of_flags('ffn', part['flags'])}"
            shape = ["--part", "ffn", "--ffn_width", part["width"], *_flag_args(part["flags"])]
            args = self._students(seed, variant, shape)
            stages.append(self._add("ffn_students", tag, name, "retrain_single_block.py", args, [store]))
        if model.merged:
            flags = model.merged["flags"]
            name = f"{self.shape.heads}x{self.shape.d_k}{variant_of_flags('merge', flags)}"
            shape = ["--block_heads", self.shape.heads, "--block_d_k", self.shape.d_k, *_flag_args(flags)]
            merge = self._add("merge_students", tag, name, "retrain_merge.py", self._students(seed, variant, shape),
                              [store])  # fmt: skip
            stages.append(merge)
            if model.merged["source"] == "conditioned":
                chain = self._students(seed, variant, shape, from_store=False)
                stages.append(self._add("chain", tag, name, "finetune_conditioned_fully_merged.py", chain, [merge]))
        return stages

    def _model_stage(self, seed: int, variant: Variant, model: PlannedModel, needs: list) -> tuple[str, str, str]:
        tag, name, data = self._built_in(seed, variant), self.built_name(model), variant.data
        output = (self.root / tag / "models" / name).as_posix()
        if model.recipe is not None:
            args = [
                *self._common(seed, tag, data),
                "--name",
                name,
                "--recipe",
                json.dumps(model.recipe, sort_keys=True),
            ]
            return self._add("model", tag, name, "build_compound.py", args, needs)
        if model.learned is not None:  # CoFi: its masks learned by distillation on the students' sentences
            args = [*self._common(seed, tag, data, training=True), *self._at_most(data, "train_sentences")]
            args += ["--budget", model.budget, *_flag_args(model.learned), "--eval_sentences", data["check_sentences"]]
            return self._add("model", tag, name, "prune_cofi.py", [*args, "--output_model", output], needs)
        flags = model.merged["flags"]
        args = [*self._common(seed, tag, data, training=True), "--block_heads", self.shape.heads]
        args += ["--block_d_k", self.shape.d_k]
        # built, not trained (--epochs 0): no data scale, which would enter its run's identity and refuse the build
        # once the study's heal_sentences changed; built anew whenever the stage runs (its merge students trained
        # on: a finished build of the old ones would be refused), the old run moved aside
        args += [*_flag_args(flags), "--source", model.merged["source"], "--epochs", 0, "--no_resume"]
        args += ["--output_model", output]
        return self._add("model", tag, name, "finetune_fully_merged.py", args, needs)

    def _heal_stage(self, seed: int, variant: Variant, built: list, healing: str, flags: dict) -> tuple:
        """Every model of the variant and seed healed by ``healing``, in lockstep: one teacher forward per batch for
        all of them (train_full_merged_model.py with several --model), each ending as it would healed alone."""
        tag, data, models = seed_folder(seed, variant.name), variant.data, self.variant_models(variant.name)
        built_in = self.root / self._built_in(seed, variant) / "models"
        args = [*self._common(seed, tag, data, training=True), "--model"]
        args += [(built_in / self.built_name(model)).as_posix() for model in models]
        args += [*self._at_most(data, "heal_sentences"), "--epochs", data["heal_epochs"]]
        args += ["--eval_sentences", data["check_sentences"], *_flag_args(flags)]
        args += ["--output_model", *(self.storage(seed, variant.name).model(model.healed(healing)) for model in models)]
        return self._add("heal", tag, healing, "train_full_merged_model.py", args, built)

    # what the workflow reads -------------------------------------------------------------------------------------
    def stage(self, kind: str, seed: str, name: str) -> Stage:
        return self.report if kind == "report" else self.stages[kind, seed, name]

    def shell_command(self, kind: str, seed: str = SHARED, name: str = "report") -> str:
        return shlex.join([self.python, *self.stage(kind, seed, name).command])

    def inputs(self, kind: str, seed: str = SHARED, name: str = "report") -> list[str]:
        return [str(self.stamp(key)) for key in self.stage(kind, seed, name).needs]

    def resources(self, kind: str) -> dict:
        """The study's ``resources``: its ``default`` entry, then the kind's own (Snakemake and SLURM names:
        runtime in minutes, mem_mb, cpus_per_task, slurm_partition, gpu, ...)."""
        return {**self.resource_table.get("default", {}), **self.resource_table.get(kind, {})}

    def save(self, path: Path) -> None:
        """What the workflow's rules read (root, interpreter, resources, every stage), for its jobs on cluster nodes,
        which :meth:`load` it instead of planning again (planning loads torch and the teacher's config)."""
        stages = [[*stage.key, list(stage.command), [list(key) for key in stage.needs]]
                  for stage in (*self.stages.values(), self.report)]  # fmt: skip
        table = {"root": str(self.root), "python": self.python, "resources": self.resource_table, "stages": stages}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(table)))

    @classmethod
    def load(cls, path: Path) -> Plan:
        """A plan :meth:`save` wrote: its stages and resources, not its models (no :meth:`describe`)."""
        table = json.loads(path.read_text())
        plan = cls.__new__(cls)
        plan.root, plan.python, plan.resource_table = Path(table["root"]), table["python"], table["resources"]
        stages = [Stage(kind, seed, name, tuple(command), tuple(map(tuple, needs)))
                  for kind, seed, name, command, needs in table["stages"]]  # fmt: skip
        plan.stages, plan.report = {stage.key: stage for stage in stages[:-1]}, stages[-1]
        return plan

    def describe(self) -> str:
        """The plan as a table: every model with its budget, share of the FLOPs and shape; then the skipped."""
        shape = self.shape
        lines = [
            f"study {self.study.name}: teacher {self.teacher} ({shape.layers} layers, hidden {shape.hidden}, "
            f"{shape.heads} heads x {shape.d_k}, feed-forward {shape.ffn}), seeds {self.study.seeds}, "
            f"{len(self.stages)} stages under {self.root}",
            f"{'model':<28} {'method':<18} {'budget':>6} {'FLOPs':>6}  shape",
        ]
        for model in self.models:
            size = ", ".join(f"{key} {value}" for key, value in model.shape.items())
            lines.append(f"{model.name:<28} {model.method:<18} {model.budget:>6.0%} {model.flops_share:>6.1%}  {size}")
        lines += [f"not planned: {line}" for line in self.skipped]
        return "\n".join(lines + self.bill())

    def bill(self) -> list[str]:
        """What the study will ask for: each store's disk (the teacher's shape and the data) and the GPU hours the
        stages request (each stage's ``runtime`` x ``gpu`` from the study's resources: an upper bound)."""
        from utils.teacher_cache import store_arrays, store_bytes

        shape = self.shape
        arrays = len(store_arrays(shape.layers, list(range(shape.layers))))  # a store of every layer
        stores = {}  # seed folder -> the data of the store built there
        for variant in self.study.variants.values():
            stores |= {self._built_in(seed, variant): variant.data for seed in variant.seeds}

        def tokens(data: dict) -> int:  # a store holds every training sentence it is built on, seq_len tokens each
            return (data["train_sentences"] or WIKITEXT2_TRAIN_SENTENCES) * data["seq_len"]

        data = max(stores.values(), key=tokens)
        sentences = data["train_sentences"] or WIKITEXT2_TRAIN_SENTENCES
        size = store_bytes(tokens(data), shape.hidden, arrays)
        total = sum(store_bytes(tokens(data), shape.hidden, arrays) for data in stores.values())
        hours = {}
        for kind, _, _ in (*self.stages, self.report.key):
            resources = self.resources(kind)
            hours[kind] = hours.get(kind, 0) + resources.get("runtime", 0) * resources.get("gpu", 0) / 60
        by_kind = ", ".join(f"{kind} {value:g}" for kind, value in hours.items() if value)
        return [
            f"disk: each store at most {size / 1e9:.1f} GB ({sentences:,} sentences x {data['seq_len']} "
            f"tokens x hidden {shape.hidden} x {arrays} arrays in fp16), {len(stores)} stores: at most "
            f"{total / 1e9:.1f} GB under {self.root}",
            f"GPU hours requested (runtime x gpu of each stage, an upper bound): {sum(hours.values()):g}"
            + (f" ({by_kind})" if by_kind else ""),
        ]


def _check_writable(root: Path) -> None:
    """The study's root, or the nearest folder above it that exists, is a folder this process may write in."""
    existing = next(folder for folder in (root, *root.parents) if folder.exists())
    why = "is a file" if not existing.is_dir() else "is not writable" if not os.access(existing, os.W_OK) else ""
    _require(not why, f"{existing} {why}: expected a folder to hold the study's root {root}", "storage")


def check_command(stage: Stage, study: Path) -> None:
    """Parse ``stage``'s flags with its script's own parser now, not hours later when the stage runs: a typo in a
    healing's flags or a value a flag does not take (``merge_init: firts``) is refused at plan time. Post-parse
    checks run too (each group's ``__post_init__``); what needs files or data is left to the script."""
    import importlib

    from utils.args import parse_args

    script = Path(stage.command[0])
    module = importlib.import_module(script.stem)  # the repository's root is on sys.path (the Snakefile's, tests')
    try:
        parse_args(module.GROUPS, "", list(stage.command[1:]), **getattr(module, "DEFAULTS", {}))
    except UserError as error:
        raise UserError(f"{study}: the {stage.kind} stage {stage.seed}/{stage.name} would be refused by "
                        f"{script.name}: {error}") from None  # fmt: skip


KINDS = ("teacher", "store", "attention_students", "ffn_students", "merge_students", "chain", "model", "heal",
         "evaluate")  # fmt: skip  # the workflow's stage rules, in the order a study runs them


def teacher_shape(study: Study, root: Path) -> TeacherShape:
    """The shape of the study's teacher: the named ``shape``, else its config (or its init's, when trained); a
    relative path is read from the study's ``root`` (:func:`from_root`)."""
    named = study.teacher.get("shape")
    if named:
        shape = TeacherShape(**SHAPES[named])
        config = Path(from_root(root, study.teacher.get("path", ""))) / "config.json"
        if study.teacher.get("path") and config.is_file():  # a local teacher's own shape (plain JSON: no torch)
            found = TeacherShape.of_config(SimpleNamespace(**json.loads(config.read_text())))
            _require(found == shape, f"{named} is {shape}, but {config} says {found}", "teacher.shape")
        return shape
    from utils.teacher import inspect_teacher

    train = study.teacher.get("train")
    source = from_root(root, study.teacher["path"]) if train is None else train.get("init", "minilm")
    return TeacherShape.of_config(inspect_teacher(source).config)
