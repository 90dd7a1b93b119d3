"""A whole sweep's cost three ways, in one run on the same data: train a student attention for every block of
a teacher (one shape, one epoch of --max_sentences sentences):

1. seed:   separate runs, the teacher's layers below the block recomputed every batch;
2. cached: separate runs with today's per-run --cache_teacher (each block builds its own cache);
3. store:  one shared teacher store (one teacher pass for all layers) read by one multi-block run;
4. lockstep: one multi-block run without a store: one teacher forward per batch feeds every student;
and the same lockstep sweep of feed-forward students (--ffn_width, default half the teacher's width).

Prints sentences x students per second of each way (builds included), their ratios, the store's build time
and size, the peak memory, the machine's threads and how much of its measured matmul peak the students'
training uses. --shape bert-base builds a random teacher of bert-base shape (12 x 768, 12 heads, 3072), else
--teacher is loaded. Writes {storage}/sweep_throughput_*/sweep_throughput.json.

python bench/sweep_throughput.py --shape bert-base --max_sentences 256
python bench/sweep_throughput.py --teacher storage/teacher --max_sentences 2000
"""

import functools
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from bench import TIMING_DEFAULTS
from models import FFN_INIT, SimplifiedBert, student_attention
from utils.args import (
    CacheArguments,
    DataArguments,
    Flags,
    StorageArguments,
    StoreArguments,
    StudentArguments,
    TeacherArguments,
    TrainingArguments,
    parse_args,
)
from utils.checkpoint import RunDirectory
from utils.data import WikiTextSplits, eval_loader, load_data
from utils.experiment import cli_entry, log, start
from utils.files import reserve_unique_dir
from utils.lockstep import fit_together
from utils.objectives import AttentionDistillation, FeedForwardDistillation, Objective
from utils.run_state import Member
from utils.students import one_teacher_forward
from utils.teacher import Teacher, TeacherInfo, inspect_teacher, load_teacher, resolve_teacher
from utils.teacher_cache import open_store, teacher_training_set
from utils.training import fit, make_optimizer

BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


@dataclass
class SweepArguments:
    attribute = "sweep"

    shape: str = field(default="", metadata={"help": "'bert-base': a random teacher of that shape (timing only)."})
    ffn_width: int = field(
        default=0, metadata={"help": "Width of the feed-forward students of the ffn way (default: half the teacher's)."}
    )


def random_teacher(device: torch.device) -> Teacher:
    """A bert-base-shaped teacher with random weights and the bert-base-uncased tokenizer (timing only)."""
    torch.manual_seed(0)
    hf_model = BertForMaskedLM(BertConfig(**BERT_BASE)).to(device).eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(resolve_teacher("minilm"))
    info = TeacherInfo("random-bert-base", "random-bert-base", hf_model.config, "random-bert-base")
    return Teacher(info, hf_model, tokenizer, True, SimplifiedBert.from_teacher(hf_model).eval())


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large fp32 GEMM on this machine (the best of a few)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


@dataclass
class Sweep:
    """What every way of the sweep shares: the teacher and its data, the attention students' shape, the training
    flags (every run starts afresh), the folder the runs go to."""

    teacher: Teacher
    data: WikiTextSplits
    valid: torch.utils.data.DataLoader
    training: TrainingArguments
    shape: StudentArguments
    root: Path
    device: torch.device
    seed: int

    @property
    def blocks(self) -> range:
        return range(self.teacher.num_layers)

    def attention_objective(self, block: int) -> AttentionDistillation:
        """A student attention of ``block``, seeded alike in every way."""
        torch.manual_seed(self.seed)
        heads, d_k = self.shape.block_heads, self.shape.block_d_k
        student = student_attention(self.teacher.model, heads, d_k, 0.1).to(self.device)
        return AttentionDistillation(self.teacher.model, block, student, mlm_metrics=False, device=self.device)

    def ffn_objective(self, block: int, width: int) -> FeedForwardDistillation:
        """A feed-forward student of ``block``, ``width`` wide, seeded alike in every way."""
        torch.manual_seed(self.seed)
        student = FFN_INIT["random"].function(self.teacher.model, block, width).to(self.device)
        return FeedForwardDistillation(self.teacher.model, block, student, mlm_metrics=False, device=self.device)

    def separate_runs(self, way: str, cache_flags: Flags | None) -> float:
        """Seconds to train a student attention for every block, one run each, teacher passes and builds included."""
        started = time.perf_counter()
        for block in self.blocks:
            objective = self.attention_objective(block)
            train_set = self.data.train
            if cache_flags is not None:
                train_set = teacher_training_set(
                    cache_flags, self.teacher, "block", block, objective.signal, self.data.train, self.device
                )
            run = RunDirectory(self.root / way / f"block_{block}", {}, 1000)
            fit(objective, train_set, self.valid, self.training, run, self.device, self.seed)
        return time.perf_counter() - started

    def lockstep(self, way: str, run_prefix: str, objective_of: Callable[[int], Objective]) -> float:
        """Seconds to train the student ``objective_of(block)`` of every block together, one teacher forward per
        batch (the attention students' signal, which the feed-forward students learn from too)."""
        started = time.perf_counter()
        members = []
        for block in self.blocks:
            objective = objective_of(block)
            run = RunDirectory(self.root / way / f"{run_prefix}_{block}", {}, 1000)
            members.append(Member(objective, run, make_optimizer(objective.trainable, self.training)))
        split = one_teacher_forward(self.teacher, "block", list(self.blocks))
        fit_together(members, self.data.train, self.valid, self.training, self.device, self.seed, split)
        return time.perf_counter() - started


def sweep_results(
    sweep: Sweep, seconds: dict[str, float], store: Path, store_build: float, ffn_width: int, seq_len: int
) -> dict:
    """The figures of the ways timed in ``seconds``: rates and ratios, the store's build time and size, the peak
    memory, and the share of this machine's measured matmul peak the students' training uses."""
    teacher, shape, blocks, train = sweep.teacher, sweep.shape, len(sweep.blocks), sweep.data.train
    work = len(train) * blocks  # sentences x students
    tokens = sum(train.lengths())
    inner, hidden = shape.block_heads * shape.block_d_k, teacher.model.config.hidden_size
    # forward: Q/K/V/output projections and scores/mixing per token; backward about twice the forward
    attention_flops = 3 * (8 * hidden * inner + 4 * seq_len * inner) * tokens
    # a feed-forward student: two dense layers per token, forward and (about twice) backward
    ffn_flops = 3 * (2 * 2 * hidden * ffn_width) * tokens
    peak = matmul_peak(sweep.device)
    return {
        "device": str(sweep.device),
        "threads": torch.get_num_threads(),
        "teacher": teacher.name,
        "layers": teacher.num_layers,
        "hidden": teacher.model.config.hidden_size,
        "sentences": len(train),
        "tokens": tokens,
        "student": f"{shape.block_heads}x{shape.block_d_k}",
        "seconds": seconds,
        "store_build_seconds": store_build,
        "store_bytes": sum(path.stat().st_size for path in store.glob("*.f16")),
        "sentences_students_per_second": {way: work / value for way, value in seconds.items()},
        "store_vs_cached": seconds["cached"] / seconds["store"],
        "store_vs_seed": seconds["seed"] / seconds["store"],
        "lockstep_vs_seed": seconds["seed"] / seconds["lockstep"],
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "matmul_peak_gflops": peak / 1e9,
        "ffn_student": ffn_width,
        "ffn_students_share_of_peak": ffn_flops * blocks / seconds["ffn_lockstep"] / peak,
        "student_training_share_of_peak": attention_flops * blocks / max(seconds["store"] - store_build, 1e-9) / peak,
    }


def print_summary(results: dict) -> None:
    """:func:`sweep_results` in a few lines: each way's time and rate, the store, the shares of the matmul peak."""
    seconds = results["seconds"]
    print(
        f"{results['layers']} blocks of {results['teacher']} on {results['device']} ({results['threads']} threads), "
        f"{results['sentences']} sentences, student {results['student']}"
    )
    for way in ("seed", "cached", "store", "lockstep"):
        rate, ratio = results["sentences_students_per_second"][way], seconds["seed"] / seconds[way]
        print(
            f"  {way:8s} {seconds[way]:8.1f} s  {rate:8.1f} sentences x students / s  ({ratio:.2f}x the original's way)"
        )
    print(
        f"  store built once in {results['store_build_seconds']:.1f} s, {results['store_bytes'] / 1e6:.0f} MB; peak "
        f"memory {results['peak_memory_mb']:.0f} MB; students' training uses "
        f"{results['student_training_share_of_peak']:.1%} of the measured {results['matmul_peak_gflops']:.0f} GFLOP/s "
        "matmul peak"
    )
    print(
        f"  feed-forward students (width {results['ffn_student']}), lockstep: {seconds['ffn_lockstep']:.1f} s, "
        f"{results['sentences_students_per_second']['ffn_lockstep']:.1f} sentences x students / s, "
        f"{results['ffn_students_share_of_peak']:.1%} of the matmul peak"
    )


@cli_entry
def main(argv=None) -> dict:
    groups = [TeacherArguments, SweepArguments, StudentArguments, DataArguments, StorageArguments, TrainingArguments]
    flags = parse_args(groups, __doc__, argv, **{**TIMING_DEFAULTS, "max_sentences": 256, "block_heads": 6})
    device = start(flags, flags.data.seed)
    teacher = (
        random_teacher(device)
        if flags.sweep.shape == "bert-base"
        else load_teacher(inspect_teacher(flags.teacher.teacher), device)
    )
    data = load_data(flags.data, teacher.tokenizer)
    root = reserve_unique_dir(flags.storage.storage_directory, "sweep_throughput_")
    training = replace(flags.training, no_resume=True)  # every way trains afresh
    valid = eval_loader(data.validation, training.batch_size, training.eval_sentences)
    sweep = Sweep(teacher, data, valid, training, flags.student, root, device, flags.data.seed)
    ffn_width = flags.sweep.ffn_width or teacher.model.config.intermediate_size // 2
    storage = replace(flags.storage, storage_directory=str(root))
    cached_flags = Flags([storage, flags.data, CacheArguments(cache_teacher=True), StoreArguments()])
    store_flags = Flags([storage, flags.data, CacheArguments(teacher_store=True), StoreArguments()])
    seconds = {"seed": sweep.separate_runs("seed", None), "cached": sweep.separate_runs("cached", cached_flags)}
    build_started = time.perf_counter()
    store = open_store(store_flags, teacher, data.train, device)
    store_build = time.perf_counter() - build_started
    seconds["store"] = store_build + sweep.separate_runs("store", store_flags)
    seconds["lockstep"] = sweep.lockstep("lockstep", "block", sweep.attention_objective)
    ffn_objective = functools.partial(sweep.ffn_objective, width=ffn_width)
    seconds["ffn_lockstep"] = sweep.lockstep("ffn_lockstep", "ffn", ffn_objective)
    results = sweep_results(sweep, seconds, store, store_build, ffn_width, flags.data.seq_len)
    (root / "sweep_throughput.json").write_text(json.dumps(results, indent=2))
    log.info("results in %s", root / "sweep_throughput.json")
    print_summary(results)
    return results


if __name__ == "__main__":
    main()
