"""Parameters, FLOPs per token and measured latency (batch 1 and 64, seq_len 40, median of repeated
runs after warm-up) of the teacher and of saved simplified models (default: every model folder under
{storage}/models), and how much of each model's FLOP reduction its measured speed-up realises.

python bench/model_cost.py --teacher storage/teacher --storage_directory storage
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from utils.args import StorageArguments, TeacherArguments, parse_args
from utils.benchmark import costs_and_latencies, relative_to
from utils.errors import UserError
from utils.experiment import cli_entry, log, start
from utils.files import atomic_write
from utils.model_io import is_simplified, load_simplified
from utils.storage import Storage
from utils.teacher import load_teacher


@dataclass
class CostArguments:
    attribute = "cost"

    models: Optional[list[str]] = field(
        default=None, metadata={"help": "Saved model folders (default: every model in the storage directory)."}
    )
    seq_len: int = field(default=40, metadata={"help": "Tokens per sentence of the timed batches."})
    repeats: int = field(default=20, metadata={"help": "Timed forward passes per figure (median reported)."})


COLUMNS = [
    ("parameters", "params (M)", 1e-6, "{:.2f}"),
    ("flops_per_token", "MFLOPs/token", 1e-6, "{:.1f}"),
    ("latency_ms_b1", "ms b=1 (median)", 1, "{:.2f}"),
    ("latency_ms_b1_min", "min", 1, "{:.2f}"),
    ("latency_ms_b1_max", "max", 1, "{:.2f}"),
    ("latency_ms_b64", "ms b=64 (median)", 1, "{:.1f}"),
    ("latency_ms_b64_min", "min", 1, "{:.1f}"),
    ("latency_ms_b64_max", "max", 1, "{:.1f}"),
    ("flop_ratio", "FLOPs vs teacher", 1, "{:.2f}"),
    ("speedup_b1", "speed-up b=1", 1, "{:.2f}"),
    ("speedup_b64", "speed-up b=64", 1, "{:.2f}"),
    ("speedup_per_flop_reduction_b64", "speed-up / FLOP reduction b=64", 1, "{:.2f}"),
]


@cli_entry
def main(argv=None) -> dict:
    flags = parse_args([TeacherArguments, CostArguments, StorageArguments], __doc__, argv)
    device = start(flags)
    storage, options = Storage(flags.storage.storage_directory), flags.cost
    folders = [Path(f) for f in options.models or []]
    if not folders:
        folders = sorted(f for f in storage.models.glob("*") if is_simplified(f))
    if not folders:
        raise UserError(f"no saved model in {storage.models}; pass --models")
    models = {"teacher": load_teacher(flags.teacher.teacher, device).model}
    models.update({folder.name: load_simplified(folder, device)[0] for folder in folders})
    results = costs_and_latencies(models, options.seq_len, device, options.repeats)
    for values in results.values():
        values.update(relative_to(values, results["teacher"]))
    lines = ["| model | " + " | ".join(title for _, title, _, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, values in results.items():
        lines.append(
            f"| {name} | " + " | ".join(fmt.format(values[key] * scale) for key, _, scale, fmt in COLUMNS) + " |"
        )
    table = "\n".join(lines) + "\n"
    output = storage.results("model_cost")
    output.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    report = {
        "device": str(device),
        "threads": threads,
        "seq_len": options.seq_len,
        "repeats": options.repeats,
        "models": results,
    }
    atomic_write(output / "model_cost.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    atomic_write(output / "model_cost.md", lambda tmp: tmp.write_text(table))
    log.info("written to %s", output)
    print(
        f"on {device} ({threads} threads), seq_len {options.seq_len}, {options.repeats} interleaved repeats:\n{table}"
    )
    return report


if __name__ == "__main__":
    main()
