"""What int8 and a shortlisted head cost in quality: each model's fused fp32 graph and its int8 copies (every
weight; the encoder's; the head's) or its shortlisted-head forms (``*_short``, ``--shortlist``) evaluated in ONNX
Runtime on the same masked test sentences; per model and form, top-1 with its 95% interval, the paired top-1
difference from the model's own fp32 graph and the agreement with its top-1. A form that loses more than half a
point of top-1 is flagged in the table. Writes {storage}/onnx_accuracy_*/onnx_accuracy.json, .md and
per_sentence.npz (``{model}/{form}/top1``, ``.../agree_top1``: paired comparisons across runs).

python bench/onnx_accuracy.py --teacher storage/teacher --models storage/models/x --data_dir ../shared/data/wikitext2
"""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
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
    require_positive,
)
from utils.data import eval_loader, frequent_tokens, load_data
from utils.evaluation import masks_fingerprint
from utils.experiment import cli_entry, start
from utils.files import atomic_write, reserve_unique_dir
from utils.onnx_eval import NOTABLE_LOSS, price_of_forms
from utils.onnx_export import onnx_session
from utils.onnx_optimize import INT8_FORMS, ONNX_FORMS, export_forms

REFERENCE = "ort_fused"  # each model's fp32 graph, what its int8 copies are compared with


@dataclass
class OnnxAccuracyArguments:
    attribute = "onnx_accuracy"

    models: list[str] = field(
        default_factory=list, metadata={"help": "Saved model folders evaluated beside the teacher."}
    )
    forms: list[str] = field(
        default_factory=lambda: list(INT8_FORMS),
        metadata={"help": f"Forms priced against the fused fp32 graph ({REFERENCE}): some of {', '.join(ONNX_FORMS)}."},
    )
    sentences: Optional[int] = field(default=None, metadata={"help": "The first N test sentences (default: all)."})
    eval_batch_size: int = field(default=64, metadata={"help": "Sentences per ONNX Runtime call."})
    threads: int = field(default=2, metadata={"help": "ONNX Runtime's intra-op threads."})

    def __post_init__(self):
        unknown = [form for form in self.forms if form not in ONNX_FORMS or form == REFERENCE]
        expected = ", ".join(form for form in ONNX_FORMS if form != REFERENCE)
        require(not unknown, f"--forms: unknown {', '.join(unknown)}; expected some of {expected}")
        require_positive(self, "sentences", "eval_batch_size", "threads")


def table(figures: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown: one line per (model, form)."""
    lines = [
        "| model | form | top-1 (95%) | − fp32, paired (95%) | = fp32 top-1 (95%) | loses > 0.5 point |",
        "|---|---|---|---|---|---|",
    ]
    for model, forms in figures.items():
        for form, f in forms.items():
            top1 = f"{f['top1']:.2%} [{f['top1_low']:.2%}, {f['top1_high']:.2%}]"
            if form == REFERENCE:
                lines.append(f"| {model} | {form} | {top1} | | | |")
                continue
            points = [100 * f[key] for key in ("top1_vs_fp32", "top1_vs_fp32_low", "top1_vs_fp32_high")]
            difference = "{:+.2f} [{:+.2f}, {:+.2f}]".format(*points)
            agree = f"{f['agree_fp32']:.1%} [{f['agree_fp32_low']:.1%}, {f['agree_fp32_high']:.1%}]"
            flag = "**yes**" if f["loses_over_half_a_point"] else "no"
            lines.append(f"| {model} | {form} | {top1} | {difference} | {agree} | {flag} |")
    return lines


@cli_entry
def main(argv=None) -> dict:
    groups = [TeacherArguments, OnnxAccuracyArguments, ShortlistArguments, DataArguments, StorageArguments]
    flags = parse_args(groups, __doc__, argv)
    options = flags.onnx_accuracy
    needs_shortlist = shortlisted(options.forms, (flags.shortlist,), "--forms")
    start(flags)
    teacher, models = teacher_and_models(flags.teacher.teacher, options.models)
    splits = load_data(flags.data, teacher.tokenizer)
    test = splits.test
    shortlist = frequent_tokens(splits.train, flags.shortlist.shortlist) if needs_shortlist else None
    count = min(options.sentences or len(test), len(test))
    root = reserve_unique_dir(flags.storage.storage_directory, "onnx_accuracy_")
    mask = teacher.tokenizer.mask_token_id
    forms = [REFERENCE, *options.forms]
    figures, arrays = {}, {}
    for name, model in models.items():
        files = export_forms(model, root, name, mask, forms, shortlist)
        sessions = {form: onnx_session(path, options.threads) for form, path in files.items()}
        loader = eval_loader(test, options.eval_batch_size, count)
        figures[name], per_sentence = price_of_forms(sessions, loader, mask, REFERENCE)
        arrays.update({f"{name}/{key}": values for key, values in per_sentence.items()})
    result = {
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "sentences": count,
        "masks": masks_fingerprint(test, count),
        "seed": flags.data.seed,
        "forms": {form: ONNX_FORMS[form] for form in forms},
        "shortlist": len(shortlist) if shortlist else None,
        "models": figures,
    }

    def write_arrays(tmp) -> None:
        with open(tmp, "wb") as handle:  # a file object: given a path without .npz, numpy would append it
            np.savez_compressed(handle, **arrays)

    atomic_write(root / "per_sentence.npz", write_arrays)
    lines = [
        f"ONNX Runtime {onnxruntime.__version__}; the first {count:,} test sentences, one [MASK] each (masks "
        f"{result['masks']}); every form of a model on the same masks as its fp32 graph ({REFERENCE}); paired "
        f"differences in points; flagged: a loss over {100 * NOTABLE_LOSS:.1f} point",
        "",
        *table(figures),
    ]
    write_results(root, "onnx_accuracy", result, lines)
    return result


if __name__ == "__main__":
    main()
