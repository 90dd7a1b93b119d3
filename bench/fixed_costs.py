"""Where batch-1 time goes, and which fixed-cost cuts in sitra's own forward pay off on this machine.

1. sitra's PyTorch forward (evaluation, latency) timed interleaved in variants: ``eager`` (sitra's forward),
   ``no mask`` (the same without the padding mask, which an unpadded batch does not need: scaled dot-product
   attention may then take a fused path) and ``compiled`` (``torch.compile`` of sitra's forward; its compile
   time reported apart). A variant belongs in sitra's forward only where it is measurably faster.
2. A profile of one ONNX Runtime call per model (the masked-only export) in each of ``--onnx_forms`` (the graph
   as exported, fused, int8): time per part (embeddings, each encoder layer, the vocabulary head at the [MASK],
   the rest) and the session's own overhead (wall time minus the time inside nodes), so a speed-up below the
   FLOP reduction can be traced to the parts that do not shrink. Nodes are assigned to parts in the graph
   ONNX Runtime actually runs (after its own fusions), by the module path in their names or outputs.

Writes {storage}/fixed_costs_*/fixed_costs.json and fixed_costs.md.

python bench/fixed_costs.py --teacher storage/teacher --models storage/models/merged_32_12 --threads 1
"""

import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime
import torch

from bench import teacher_and_models, write_results
from utils.args import StorageArguments, TeacherArguments, parse_args, require
from utils.benchmark import flop_reductions, measure_interleaved, timing_batch
from utils.experiment import cli_entry, start
from utils.files import reserve_unique_dir
from utils.onnx_export import onnx_session
from utils.onnx_optimize import ONNX_FORMS, SHORTLIST_FORMS, export_forms

PROFILED_FORMS = {form: what for form, what in ONNX_FORMS.items() if form not in SHORTLIST_FORMS}  # no data needed


@dataclass
class FixedCostArguments:
    attribute = "fixed_costs"

    models: list[str] = field(
        default_factory=list, metadata={"help": "Saved model folders measured beside the teacher."}
    )
    batch_size: int = field(default=1, metadata={"help": "Sentences per call."})
    seq_len: int = field(default=40, metadata={"help": "Tokens per sentence."})
    threads: int = field(default=1, metadata={"help": "CPU threads (torch and ONNX Runtime)."})
    repeats: int = field(default=50, metadata={"help": "Timed calls per figure (median), after 3 warm-up calls."})
    compile: bool = field(default=True, metadata={"help": "Also time torch.compile of each model."})
    onnx_forms: list[str] = field(
        default_factory=lambda: list(PROFILED_FORMS),
        metadata={"help": "ONNX Runtime forms profiled: " + "; ".join(f"{k}: {v}" for k, v in PROFILED_FORMS.items())},
    )

    def __post_init__(self):
        unknown = [form for form in self.onnx_forms if form not in PROFILED_FORMS]
        expected = ", ".join(PROFILED_FORMS)
        require(not unknown, f"--onnx_forms: unknown {', '.join(unknown)}; expected some of {expected}")


def unmasked_forward(model, input_ids, attention_mask, labels):
    """sitra's forward without the padding mask: the same logits when nothing is padded (tested)."""
    hidden = model.embeddings(input_ids=input_ids)
    for layer in model.layers:
        hidden = layer(hidden, None)
    return model.masked_logits(hidden, labels)


def part_of(node: str) -> str:
    """The model part an ONNX node belongs to, from the module path the exporter put in its name (or in the name
    of a tensor it writes: ``Attention_0`` writes ``/model/layers.0/attention/...``)."""
    found = re.search(r"layers\.(\d+)", node)
    if found:
        return f"layer {found.group(1)}"
    for key, part in (("embeddings", "embeddings"), ("EmbedLayerNormalization", "embeddings")):
        if key in node:
            return part
    if "mlm_head" in node:
        return "vocabulary head"
    return "other nodes"


def parts_of_nodes(graph_path: Path) -> dict[str, str]:
    """Node name -> part (:func:`part_of` of its name, else of its outputs) in the graph at ``graph_path``."""
    parts = {}
    for node in onnx.load(str(graph_path)).graph.node:
        named = [part_of(text) for text in (node.name, node.op_type, *node.output)]
        parts[node.name] = next((part for part in named if part != "other nodes"), "other nodes")
    return parts


def onnx_profile(path: Path, feed: dict, threads: int, calls: int) -> dict[str, float]:
    """Mean milliseconds per call of each part (:func:`part_of`), and ``session overhead``: wall time per call
    minus the time spent inside nodes."""
    options = onnxruntime.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    running = path.with_suffix(".running.onnx")  # the graph after ONNX Runtime's own fusions: what is profiled
    options.optimized_model_filepath = str(running)
    session = onnx_session(path, threads, options)  # as sitra runs it (the runtime's skip-LayerNorm fusion off)
    parts = parts_of_nodes(running)
    for _ in range(3):
        session.run(None, feed)
    started = time.perf_counter()
    for _ in range(calls):
        session.run(None, feed)
    wall = 1000 * (time.perf_counter() - started) / calls
    events = json.loads(Path(session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_part: dict[str, float] = defaultdict(float)
    for event in nodes[-calls * (len(nodes) // (calls + 3)) :]:  # the timed calls (after the warm-up ones)
        node = event["name"].removesuffix("_kernel_time")
        per_part[parts.get(node, part_of(node))] += event["dur"] / 1000 / calls
    per_part["session overhead"] = max(wall - sum(per_part.values()), 0.0)
    return {"wall_ms": wall, **dict(per_part)}


@cli_entry
def main(argv=None) -> dict:
    flags = parse_args([TeacherArguments, FixedCostArguments, StorageArguments], __doc__, argv)
    device = start(flags)
    options = flags.fixed_costs
    torch.set_num_threads(options.threads)
    teacher, models = teacher_and_models(flags.teacher.teacher, options.models)
    root = reserve_unique_dir(flags.storage.storage_directory, "fixed_costs_")
    batch = timing_batch(teacher.model.config.vocab_size, options.batch_size, options.seq_len, torch.device("cpu"))
    mask = teacher.tokenizer.mask_token_id
    batch["input_ids"][:, options.seq_len // 2] = mask
    calls, compile_seconds = {}, {}
    for name, model in models.items():
        calls[(name, "eager")] = lambda model=model: model(**batch)
        calls[(name, "no mask")] = lambda model=model: unmasked_forward(model, **batch)
        if options.compile:
            compiled = torch.compile(model)
            started = time.perf_counter()
            with torch.inference_mode():
                compiled(**batch)
            compile_seconds[name] = time.perf_counter() - started
            calls[(name, "compiled")] = lambda compiled=compiled: compiled(**batch)
    with torch.inference_mode():
        timings = measure_interleaved(calls, device, options.repeats)
    feed = {key: batch[key].numpy() for key in ("input_ids", "attention_mask")}
    profiles = {}
    for name, model in models.items():
        for form, path in export_forms(model, root, name, mask, options.onnx_forms).items():
            profiles[f"{name} / {form}"] = onnx_profile(path, feed, options.threads, options.repeats)
    reduction = flop_reductions(models, options.seq_len)
    result = {
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "settings": {
            key: getattr(options, key) for key in ("batch_size", "seq_len", "threads", "repeats", "onnx_forms")
        },
        "pytorch_ms": {f"{name} / {variant}": timing for (name, variant), timing in timings.items()},
        "compile_seconds": compile_seconds,
        "onnxruntime_profile_ms": profiles,
        "flop_reduction": reduction,
    }
    variants = list(dict.fromkeys(variant for _, variant in timings))
    lines = [
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; batch {options.batch_size}, "
        f"{options.seq_len} tokens, {options.threads} thread(s); median of {options.repeats} calls, interleaved",
        "",
        "| model | FLOP reduction | " + " | ".join(f"PyTorch {v} (ms)" for v in variants) + " |",
        "|---|---|" + "---|" * len(variants),
    ]
    for name in models:
        cells = " | ".join(f"{timings[(name, v)]['median']:.2f}" for v in variants)
        lines.append(f"| {name} | {reduction[name]:.2f}x | {cells} |")
    parts = list(dict.fromkeys(part for profile in profiles.values() for part in profile if part != "wall_ms"))
    parts.sort(
        key=lambda part: (not part.startswith("embeddings"), part.startswith(("vocabulary", "other", "session")), part)
    )
    lines += ["", "ONNX Runtime, ms per call by part (profiled):", ""]
    lines += ["| model / form | wall | " + " | ".join(parts) + " |", "|---|---|" + "---|" * len(parts)]
    for name, profile in profiles.items():
        cells = " | ".join(f"{profile[p]:.2f}" if p in profile else "" for p in parts)
        lines.append(f"| {name} | {profile['wall_ms']:.2f} | {cells} |")
    write_results(root, "fixed_costs", result, lines)
    return result


if __name__ == "__main__":
    main()
