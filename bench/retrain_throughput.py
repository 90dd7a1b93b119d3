"""Sentences per second of training one block (the teacher's last layer, where its prefix costs most),
the original repository's way and this project's ways, in one run on the same data, teacher and flags:

- seed:     teacher prefix recomputed every batch, every sentence padded to --seq_len, fp32, no cache;
- defaults: this project's defaults (batches grouped by length and padded to their longest sentence, bf16
            autocast on GPUs);
- cached:   defaults plus --cache_teacher (the prefix runs once; timed on an epoch after the build).

Each is one real training run through utils.training.fit; the figure is training time only (the
per-epoch evaluation is excluded). Writes {output}/retrain_throughput.json.

python bench/retrain_throughput.py --teacher minilm --max_sentences 4000
"""

import json
import time
from dataclasses import replace

from bench import TIMING_DEFAULTS
from models import student_attention
from utils.args import (
    CacheArguments,
    DataArguments,
    Flags,
    StorageArguments,
    StudentArguments,
    TeacherArguments,
    TrainingArguments,
    parse_args,
)
from utils.checkpoint import RunDirectory
from utils.data import eval_loader, load_data
from utils.experiment import cli_entry, log, start
from utils.files import reserve_unique_dir
from utils.objectives import AttentionDistillation
from utils.teacher import load_teacher
from utils.teacher_cache import teacher_training_set
from utils.training import fit

GROUPS = [TeacherArguments, StudentArguments, DataArguments, StorageArguments, TrainingArguments]
DEFAULTS = {**TIMING_DEFAULTS, "max_sentences": 4000, "block_heads": 12}


@cli_entry
def main(argv=None) -> dict:
    flags = parse_args(GROUPS, __doc__, argv, **DEFAULTS)
    device = start(flags, flags.data.seed)
    teacher = load_teacher(flags.teacher.teacher, device)
    block, shape, training = teacher.num_layers - 1, flags.student, flags.training
    data = load_data(flags.data, teacher.tokenizer)
    valid = eval_loader(data.validation, training.batch_size, training.eval_sentences)
    root = reserve_unique_dir(flags.storage.storage_directory, "throughput_")  # unique even for runs in one second
    results = {
        "device": str(device),
        "teacher": teacher.name,
        "block": block,
        "sentences": len(data.train),
        "batch_size": training.batch_size,
        "seq_len": flags.data.seq_len,
    }

    def objective() -> AttentionDistillation:
        student = student_attention(teacher.model, shape.block_heads, shape.block_d_k, 0.1).to(device)
        return AttentionDistillation(teacher.model, block, student, mlm_metrics=False, device=device)

    def train(name: str, train_set, precision: str, group_by_length: bool = True) -> float:
        run_training = replace(training, precision=precision, epochs=1, no_resume=True, group_by_length=group_by_length)
        run = RunDirectory(root / name, {}, 1000)
        history = fit(objective(), train_set, valid, run_training, run, device, flags.data.seed)
        return history[-1]["sentences_per_second"]

    data.train.pad_to = flags.data.seq_len
    results["seed"] = train("seed", data.train, "fp32", group_by_length=False)
    data.train.pad_to = None
    results["defaults"] = train("defaults", data.train, "auto")
    started = time.perf_counter()
    cache_flags = Flags(
        [replace(flags.storage, storage_directory=str(root)), flags.data, CacheArguments(cache_teacher=True)]
    )
    cached = teacher_training_set(cache_flags, teacher, "bench", block, objective().signal, data.train, device)
    results["cache_build_seconds"] = time.perf_counter() - started
    results["cached"] = train("cached", cached, "auto")
    results["defaults_vs_seed"] = results["defaults"] / results["seed"]
    results["cached_vs_seed"] = results["cached"] / results["seed"]
    (root / "retrain_throughput.json").write_text(json.dumps(results, indent=2))
    log.info("results in %s", root / "retrain_throughput.json")
    sentences, batch_size = len(data.train), training.batch_size
    print(f"training block {block} of {teacher.name} on {device}, {sentences} sentences, batch {batch_size}")
    for name in ("seed", "defaults", "cached"):
        print(
            f"  {name:9s} {results[name]:8.1f} sentences/s  ({results[name] / results['seed']:.2f}x the original's way)"
        )
    print(f"  cache built once in {results['cache_build_seconds']:.1f} s")
    return results


if __name__ == "__main__":
    main()
