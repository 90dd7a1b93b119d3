"""Latency of the teacher and simplified models side by side, in eager PyTorch and in ONNX Runtime (the masked-only
export: the vocabulary head runs at the [MASK] position only, as fill-mask and evaluation need), at each batch size,
sequence length and thread count; every (model, runtime) timed interleaved with the others (utils/benchmark.py).
ONNX Runtime runs each model in the forms ``--runtimes`` names: the graph as exported, the graph fused by ONNX
Runtime's transformer optimizer, int8 copies of the fused graph (every weight, the encoder's or the head's), and the
fused graph with a shortlisted vocabulary head (``*_short``: the ``--shortlist`` tokens most frequent in the training
split of ``--data_dir``); the teacher is exported the same way in each, and is what each form's speed-up is against.
For each model: its FLOP reduction (the teacher's encoder FLOPs per token / its own), the speed-up over the teacher
in the same runtime, and speed-up ÷ FLOP reduction (1: the model is as much faster as it is smaller).
Writes {storage}/latency_*/latency.json (every row) and latency.md (the runtimes side by side).

python bench/latency.py --teacher storage/teacher --models storage/models/merged_32_12 storage/models/x
"""

from dataclasses import dataclass, field

import onnxruntime
import torch

from bench import shortlisted, teacher_and_models, write_results
from utils.args import (
    DataArguments,
    ShortlistArguments,
    StorageArguments,
    TeacherArguments,
    parse_args,
    require,
)
from utils.benchmark import flop_reductions, measure_interleaved, timing_batch
from utils.data import training_shortlist
from utils.experiment import cli_entry, start
from utils.files import reserve_unique_dir
from utils.onnx_export import onnx_session
from utils.onnx_optimize import ONNX_FORMS, export_forms

RUNTIMES = {"pytorch": "sitra's eager forward", **{form: f"ONNX Runtime, {what}" for form, what in ONNX_FORMS.items()}}


@dataclass
class LatencyArguments:
    attribute = "latency"

    models: list[str] = field(default_factory=list, metadata={"help": "Saved model folders timed beside the teacher."})
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64], metadata={"help": "Sentences per timed call."})
    seq_lens: list[int] = field(default_factory=lambda: [40, 128], metadata={"help": "Tokens per sentence."})
    threads: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "CPU threads (torch and ORT)."})
    repeats: int = field(default=20, metadata={"help": "Timed calls per figure (median reported), after 3 warm-up."})
    runtimes: list[str] = field(
        default_factory=lambda: list(RUNTIMES),
        metadata={"help": "What each model is timed in: " + "; ".join(f"{k}: {v}" for k, v in RUNTIMES.items())},
    )

    def __post_init__(self):
        unknown = [runtime for runtime in self.runtimes if runtime not in RUNTIMES]
        require(not unknown, f"--runtimes: unknown {', '.join(unknown)}; expected some of {', '.join(RUNTIMES)}")
        require(len(self.runtimes) > 0, "--runtimes: name at least one")


FP32_TEACHER = ("teacher", "ort_fused")  # what an int8 model replaces in deployment


def latency_rows(timings: dict, reduction: dict, threads: int, batch_size: int, seq_len: int) -> list[dict]:
    """One row per (model, runtime) timed: milliseconds and the speed-up over the teacher in the same runtime (and,
    where the teacher's fused fp32 graph was timed, over that: what an int8 copy gains in deployment)."""
    rows = []
    for (name, runtime), timing in timings.items():
        speedup = timings[("teacher", runtime)]["median"] / timing["median"]
        against_fp32 = {}
        if FP32_TEACHER in timings:
            against_fp32["speedup_vs_teacher_fused_fp32"] = timings[FP32_TEACHER]["median"] / timing["median"]
        rows.append(
            {
                "model": name,
                "runtime": runtime,
                "threads": threads,
                "batch_size": batch_size,
                "seq_len": seq_len,
                "ms": timing["median"],
                "ms_min": timing["min"],
                "ms_max": timing["max"],
                "flop_reduction": reduction[name],
                "speedup": speedup,
                "speedup_per_flop_reduction": speedup / reduction[name],
                **against_fp32,
            }
        )
    return rows


def side_by_side(rows: list[dict], runtimes: list[str]) -> list[str]:
    """Markdown: one line per (model, threads, batch, length), one column per runtime: the teacher's milliseconds,
    each model's speed-up with speed-up ÷ FLOP reduction in brackets."""
    lines = [
        "| model | FLOP reduction | threads | batch | tokens | " + " | ".join(runtimes) + " |",
        "|---|---|---|---|---|" + "---|" * len(runtimes),
    ]
    cells: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        key = (row["model"], row["threads"], row["batch_size"], row["seq_len"])
        cells.setdefault(key, {})[row["runtime"]] = row
    for (model, threads, batch_size, seq_len), by_runtime in cells.items():
        reduction = next(iter(by_runtime.values()))["flop_reduction"]
        values = " | ".join(
            f"{row['ms']:.2f} ms"
            if model == "teacher"
            else f"{row['speedup']:.2f}x ({row['speedup_per_flop_reduction']:.2f})"
            for row in (by_runtime[runtime] for runtime in runtimes)
        )
        lines.append(f"| {model} | {reduction:.2f}x | {threads} | {batch_size} | {seq_len} | {values} |")
    return lines


def int8_against_fp32(rows: list[dict], runtimes: list[str]) -> list[str]:
    """Markdown (when the teacher's fused fp32 graph and an int8 form were timed): every model's int8 forms against
    the teacher's fused fp32 graph, the deployment's gain."""
    int8 = [runtime for runtime in runtimes if "int8" in runtime]
    if not int8 or "ort_fused" not in runtimes:
        return []
    lines = [
        "Against the teacher's fused fp32 graph (ort_fused):",
        "",
        "| model | threads | batch | tokens | ort_fused | " + " | ".join(int8) + " |",
        "|---|---|---|---|---|" + "---|" * len(int8),
    ]
    cells: dict[tuple, dict[str, float]] = {}
    for row in rows:
        if row["runtime"] == "ort_fused" or row["runtime"] in int8:
            key = (row["model"], row["threads"], row["batch_size"], row["seq_len"])
            cells.setdefault(key, {})[row["runtime"]] = row["speedup_vs_teacher_fused_fp32"]
    for (model, threads, batch_size, seq_len), speedups in cells.items():
        values = " | ".join(f"{speedups[runtime]:.2f}x" for runtime in ["ort_fused", *int8])
        lines.append(f"| {model} | {threads} | {batch_size} | {seq_len} | {values} |")
    return [*lines, ""]


@cli_entry
def main(argv=None) -> dict:
    groups = [TeacherArguments, LatencyArguments, ShortlistArguments, DataArguments, StorageArguments]
    flags = parse_args(groups, __doc__, argv)
    options = flags.latency
    needs_shortlist = shortlisted(options.runtimes, (flags.shortlist, flags.data), "--runtimes")
    device = start(flags)
    teacher, models = teacher_and_models(flags.teacher.teacher, options.models)
    root = reserve_unique_dir(flags.storage.storage_directory, "latency_")
    mask = teacher.tokenizer.mask_token_id
    forms = [runtime for runtime in options.runtimes if runtime in ONNX_FORMS]
    shortlist = None
    if needs_shortlist:
        shortlist = training_shortlist(flags.data, teacher.tokenizer, flags.shortlist.shortlist)
    files = {name: export_forms(model, root, name, mask, forms, shortlist) for name, model in models.items()}
    reduction = flop_reductions(models, 40)
    rows = []
    for threads in options.threads:
        torch.set_num_threads(threads)
        sessions = {(name, form): onnx_session(path, threads) for name in models for form, path in files[name].items()}
        for batch_size in options.batch_sizes:
            for seq_len in options.seq_lens:
                batch = timing_batch(teacher.model.config.vocab_size, batch_size, seq_len, torch.device("cpu"))
                batch["input_ids"][:, seq_len // 2] = mask  # the masked-only export finds the position by its token
                feed = {key: batch[key].numpy() for key in ("input_ids", "attention_mask")}
                calls = {}
                for name, model in models.items():
                    for runtime in options.runtimes:
                        if runtime == "pytorch":
                            calls[(name, runtime)] = lambda model=model, batch=batch: model(**batch)
                        else:
                            session = sessions[(name, runtime)]
                            calls[(name, runtime)] = lambda session=session, feed=feed: session.run(None, feed)
                with torch.inference_mode():
                    timings = measure_interleaved(calls, device, options.repeats)
                rows += latency_rows(timings, reduction, threads, batch_size, seq_len)
    versions = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    result = {"versions": versions, "runtimes": {runtime: RUNTIMES[runtime] for runtime in options.runtimes}}
    if shortlist is not None:
        result["shortlist"] = len(shortlist)
    result["rows"] = rows
    lines = [
        f"torch {versions['torch']}, onnxruntime {versions['onnxruntime']}; median of {options.repeats} calls, "
        "interleaved; the teacher's milliseconds, each model's speed-up over the teacher in the same runtime "
        "(÷ FLOP reduction)",
        "",
        *side_by_side(rows, options.runtimes),
        "",
        *int8_against_fp32(rows, options.runtimes),
        *(f"- {runtime}: {RUNTIMES[runtime]}" for runtime in options.runtimes),
    ]
    write_results(root, "latency", result, lines)
    return result


if __name__ == "__main__":
    main()
