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

import json
import resource
import time
from dataclasses import dataclass, field, replace

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
from utils.data import eval_loader, load_data
from utils.experiment import cli_entry, log, start
from utils.files import reserve_unique_dir
from utils.lockstep import fit_together
from utils.objectives import AttentionDistillation, FeedForwardDistillation
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
    training, shape, blocks = flags.training, flags.student, range(teacher.num_layers)
    valid = eval_loader(data.validation, training.batch_size, training.eval_sentences)

    def objective_of(block: int) -> AttentionDistillation:
        torch.manual_seed(flags.data.seed)
        student = student_attention(teacher.model, shape.block_heads, shape.block_d_k, 0.1).to(device)
        return AttentionDistillation(teacher.model, block, student, mlm_metrics=False, device=device)

    def run_all(way: str, cache_flags: Flags | None) -> float:
        """Seconds to train a student for every block, teacher passes and builds included."""
        started = time.perf_counter()
        for block in blocks:
            objective = objective_of(block)
            train_set = data.train
            if cache_flags is not None:
                train_set = teacher_training_set(
                    cache_flags, teacher, "block", block, objective.signal, data.train, device
                )
            run = RunDirectory(root / way / f"block_{block}", {}, 1000)
            fit(objective, train_set, valid, replace(training, no_resume=True), run, device, flags.data.seed)
        return time.perf_counter() - started

    def run_lockstep() -> float:
        """Seconds to train every block's student together, one teacher forward per batch."""
        started = time.perf_counter()
        members = []
        for block in blocks:
            objective = objective_of(block)
            run = RunDirectory(root / "lockstep" / f"block_{block}", {}, 1000)
            members.append(Member(objective, run, make_optimizer(objective.trainable, training)))
        split = one_teacher_forward(teacher, "block", list(blocks))
        fit_together(members, data.train, valid, replace(training, no_resume=True), device, flags.data.seed, split)
        return time.perf_counter() - started

    ffn_width = flags.sweep.ffn_width or teacher.model.config.intermediate_size // 2

    def run_ffn_lockstep() -> float:
        """Seconds to train a feed-forward student for every block together, one teacher forward per batch."""
        started = time.perf_counter()
        members = []
        for block in blocks:
            torch.manual_seed(flags.data.seed)
            student = FFN_INIT["random"].function(teacher.model, block, ffn_width).to(device)
            objective = FeedForwardDistillation(teacher.model, block, student, mlm_metrics=False, device=device)
            run = RunDirectory(root / "ffn_lockstep" / f"ffn_{block}", {}, 1000)
            members.append(Member(objective, run, make_optimizer(objective.trainable, training)))
        split = one_teacher_forward(teacher, "block", list(blocks))  # the same signal as attention students'
        fit_together(members, data.train, valid, replace(training, no_resume=True), device, flags.data.seed, split)
        return time.perf_counter() - started

    storage = replace(flags.storage, storage_directory=str(root))
    cached_flags = Flags([storage, flags.data, CacheArguments(cache_teacher=True), StoreArguments()])
    store_flags = Flags([storage, flags.data, CacheArguments(teacher_store=True), StoreArguments()])
    seconds = {"seed": run_all("seed", None), "cached": run_all("cached", cached_flags)}
    build_started = time.perf_counter()
    store = open_store(store_flags, teacher, data.train, device)
    store_build = time.perf_counter() - build_started
    seconds["store"] = store_build + run_all("store", store_flags)
    seconds["lockstep"] = run_lockstep()
    seconds["ffn_lockstep"] = run_ffn_lockstep()
    work = len(data.train) * len(blocks)  # sentences x students
    tokens = sum(data.train.lengths())
    inner, hidden = shape.block_heads * shape.block_d_k, teacher.model.config.hidden_size
    # forward: Q/K/V/output projections and scores/mixing per token; backward about twice the forward
    attention_flops = 3 * (8 * hidden * inner + 4 * flags.data.seq_len * inner) * tokens
    # a feed-forward student: two dense layers per token, forward and (about twice) backward
    ffn_flops = 3 * (2 * 2 * hidden * ffn_width) * tokens
    peak = matmul_peak(device)
    results = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "teacher": teacher.name,
        "layers": teacher.num_layers,
        "hidden": teacher.model.config.hidden_size,
        "sentences": len(data.train),
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
        "ffn_students_share_of_peak": ffn_flops * len(blocks) / seconds["ffn_lockstep"] / peak,
        "student_training_share_of_peak": attention_flops
        * len(blocks)
        / max(seconds["store"] - store_build, 1e-9)
        / peak,
    }
    (root / "sweep_throughput.json").write_text(json.dumps(results, indent=2))
    log.info("results in %s", root / "sweep_throughput.json")
    print(
        f"{teacher.num_layers} blocks of {teacher.name} on {device} ({results['threads']} threads), "
        f"{len(data.train)} sentences, student {results['student']}"
    )
    for way in ("seed", "cached", "store", "lockstep"):
        rate, ratio = results["sentences_students_per_second"][way], seconds["seed"] / seconds[way]
        print(
            f"  {way:8s} {seconds[way]:8.1f} s  {rate:8.1f} sentences x students / s  ({ratio:.2f}x the original's way)"
        )
    print(
        f"  store built once in {store_build:.1f} s, {results['store_bytes'] / 1e6:.0f} MB; peak memory "
        f"{results['peak_memory_mb']:.0f} MB; students' training uses {results['student_training_share_of_peak']:.1%} "
        f"of the measured {results['matmul_peak_gflops']:.0f} GFLOP/s matmul peak"
    )
    print(
        f"  feed-forward students (width {ffn_width}), lockstep: {seconds['ffn_lockstep']:.1f} s, "
        f"{results['sentences_students_per_second']['ffn_lockstep']:.1f} sentences x students / s, "
        f"{results['ffn_students_share_of_peak']:.1%} of the matmul peak"
    )
    return results


if __name__ == "__main__":
    main()
