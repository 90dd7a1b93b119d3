"""Sentences per second of training one block (the teacher's last layer, where its prefix costs most),
the seed's way and this project's ways, in one run on the same data, teacher and flags:

- seed:     teacher prefix recomputed every batch, every sentence padded to --seq_len, fp32, no cache;
- defaults: this project's defaults (batches grouped by length and padded to their longest sentence, bf16
            autocast on GPUs);
- cached:   defaults plus --cache_teacher (the prefix runs once; timed on an epoch after the build).

Each is one real training run through utils.training.fit; the figure is training time only (the
per-epoch evaluation is excluded). Writes {output}/retrain_throughput.json.

python bench/retrain_throughput.py --teacher minilm --max_sentences 4000
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import student_attention  # noqa: E402
from utils.args import DataArguments, StorageArguments, StudentArguments, TeacherArguments, TrainingArguments, parse_args  # noqa: E402
from utils.checkpoint import RunDirectory  # noqa: E402
from utils.data import eval_loader, load_data  # noqa: E402
from utils.errors import cli_entry  # noqa: E402
from utils.files import reserve_unique_dir  # noqa: E402
from utils.experiment import log, start  # noqa: E402
from utils.objectives import AttentionDistillation  # noqa: E402
from utils.teacher import load_teacher  # noqa: E402
from utils.teacher_cache import cached_training_set  # noqa: E402
from utils.training import fit  # noqa: E402


@cli_entry
def main(argv=None) -> dict:
    args = parse_args([TeacherArguments, StudentArguments, DataArguments, StorageArguments, TrainingArguments], __doc__,
                      argv, teacher="minilm", max_sentences=4000, storage_directory="storage/bench", eval_sentences=1,
                      epochs=1, block_heads=12, block_d_k=32)  # fmt: skip
    device = start(args)
    teacher = load_teacher(args.teacher, device)
    block = teacher.num_layers - 1
    data = load_data(args, teacher.tokenizer)
    valid = eval_loader(data.validation, args.batch_size, args.eval_sentences)
    root = reserve_unique_dir(args.storage_directory, "throughput_")  # unique even for runs started in one second
    results = {"device": str(device), "teacher": teacher.name, "block": block, "sentences": len(data.train),
               "batch_size": args.batch_size, "seq_len": args.seq_len}  # fmt: skip

    def train(name: str, train_set, precision: str, epochs: int, group_by_length: bool = True) -> float:
        student = student_attention(teacher.model, args.block_heads, args.block_d_k, 0.1).to(device)
        objective = AttentionDistillation(teacher.model, block, student, mlm_metrics=False, device=device)
        run_args = with_flags(args, precision=precision, epochs=epochs, no_resume=True, group_by_length=group_by_length)
        history = fit(objective, train_set, valid, run_args, RunDirectory(root / name, {}, 1000), device)
        return history[-1]["sentences_per_second"]

    data.train.pad_to = args.seq_len
    results["seed"] = train("seed", data.train, "fp32", 1, group_by_length=False)
    data.train.pad_to = None
    results["defaults"] = train("defaults", data.train, "auto", 1)
    student = student_attention(teacher.model, args.block_heads, args.block_d_k, 0.1).to(device)
    objective = AttentionDistillation(teacher.model, block, student, mlm_metrics=False, device=device)
    started = time.perf_counter()
    cached = cached_training_set(with_flags(args, storage_directory=str(root)), "bench_block", teacher.name, block, objective,
                                 data.train, teacher.model.config.hidden_size, device)  # fmt: skip
    results["cache_build_seconds"] = time.perf_counter() - started
    results["cached"] = train("cached", cached, "auto", 1)
    results["defaults_vs_seed"] = results["defaults"] / results["seed"]
    results["cached_vs_seed"] = results["cached"] / results["seed"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "retrain_throughput.json").write_text(json.dumps(results, indent=2))
    log.info("results in %s", root / "retrain_throughput.json")
    print(f"training block {block} of {teacher.name} on {device}, {len(data.train)} sentences, batch {args.batch_size}")
    for name in ("seed", "defaults", "cached"):
        print(f"  {name:9s} {results[name]:8.1f} sentences/s  ({results[name] / results['seed']:.2f}x the seed's way)")
    print(f"  cache built once in {results['cache_build_seconds']:.1f} s")
    return results


def with_flags(args, **changes):
    """A copy of the parsed flags with some changed."""
    return type(args)(**{**vars(args), **changes})


if __name__ == "__main__":
    main()
