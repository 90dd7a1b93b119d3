"""Latency of the teacher and simplified models side by side, in eager PyTorch and in ONNX Runtime (the masked-only
export: the vocabulary head runs at the [MASK] position only, as fill-mask and evaluation need), at each batch size,
sequence length and thread count; every (model, runtime) timed interleaved with the others (utils/benchmark.py).
For each model: its FLOP reduction (the teacher's encoder FLOPs per token / its own), the speed-up over the teacher
in the same runtime, and speed-up ÷ FLOP reduction (1: the model is as much faster as it is smaller).
Writes {storage}/latency_*/latency.json and latency.md.

python bench/latency.py --teacher storage/teacher --models storage/models/merged_32_12 storage/models/x
"""

from dataclasses import dataclass, field

import onnxruntime
import torch

from bench import teacher_and_models, write_results
from utils.args import StorageArguments, TeacherArguments, parse_args
from utils.benchmark import flop_reductions, measure_interleaved, timing_batch
from utils.experiment import cli_entry, start
from utils.files import reserve_unique_dir
from utils.onnx_export import export_onnx, onnx_session


@dataclass
class LatencyArguments:
    attribute = "latency"

    models: list[str] = field(default_factory=list, metadata={"help": "Saved model folders timed beside the teacher."})
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64], metadata={"help": "Sentences per timed call."})
    seq_lens: list[int] = field(default_factory=lambda: [40, 128], metadata={"help": "Tokens per sentence."})
    threads: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "CPU threads (torch and ORT)."})
    repeats: int = field(default=20, metadata={"help": "Timed calls per figure (median reported), after 3 warm-up."})


@cli_entry
def main(argv=None) -> dict:
    flags = parse_args([TeacherArguments, LatencyArguments, StorageArguments], __doc__, argv)
    device = start(flags)
    options = flags.latency
    teacher, models = teacher_and_models(flags.teacher.teacher, options.models)
    root = reserve_unique_dir(flags.storage.storage_directory, "latency_")
    mask = teacher.tokenizer.mask_token_id
    files = {name: export_onnx(model, root / f"{name}.onnx", mask) for name, model in models.items()}
    reduction = flop_reductions(models, 40)
    rows = []
    for threads in options.threads:
        torch.set_num_threads(threads)
        sessions = {name: onnx_session(path, threads) for name, path in files.items()}
        for batch_size in options.batch_sizes:
            for seq_len in options.seq_lens:
                batch = timing_batch(teacher.model.config.vocab_size, batch_size, seq_len, torch.device("cpu"))
                batch["input_ids"][:, seq_len // 2] = mask  # the masked-only export finds the position by its token
                feed = {key: batch[key].numpy() for key in ("input_ids", "attention_mask")}
                calls = {}
                for name, model in models.items():
                    calls[(name, "pytorch")] = lambda model=model, batch=batch: model(**batch)
                    calls[(name, "onnxruntime")] = lambda session=sessions[name], feed=feed: session.run(None, feed)
                with torch.inference_mode():
                    timings = measure_interleaved(calls, device, options.repeats)
                for (name, runtime), timing in timings.items():
                    speedup = timings[("teacher", runtime)]["median"] / timing["median"]
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
                        }
                    )
    versions = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    result = {"versions": versions, "rows": rows}
    lines = [
        f"torch {versions['torch']}, onnxruntime {versions['onnxruntime']}; median of {options.repeats} calls",
        "",
        "| model | runtime | threads | batch | seq_len | ms | FLOP reduction | speed-up | speed-up ÷ FLOP reduction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['runtime']} | {row['threads']} | {row['batch_size']} | {row['seq_len']} | "
            f"{row['ms']:.2f} | {row['flop_reduction']:.2f}x | {row['speedup']:.2f}x | "
            f"{row['speedup_per_flop_reduction']:.2f} |"
        )
    write_results(root, "latency", result, lines)
    return result


if __name__ == "__main__":
    main()
