"""Head + neuron pruning before any healing, by how the pruned feed-forwards are refitted, seed by seed: plain
pruning, least squares (Kwon et al.) and the validated reconstruction (utils/pruning.py, RECONSTRUCTION), each on
the same kept heads and neurons (ranked on the seed's masked validation sentences, as build_compound.py ranks
them), checked against the teacher on other validation sentences. What the field's baseline looks like before
healing, and why one reconstruction breaks where another does not (each layer's refitted bias and largest weight).

python bench/reconstruction.py --teacher storage/round3/teacher --block_heads 6 --ffn_width 384 --seeds 42 43 44 \
    --output docs/data/round3/before_healing.csv
"""

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import assemble, pruned_modules  # noqa: E402
from utils.data import eval_loader, load_masked_splits  # noqa: E402
from utils.device import pick_device  # noqa: E402
from utils.metrics import evaluate_mlm  # noqa: E402
from utils.pruning import (  # noqa: E402
    RECONSTRUCTION,
    calibration_loaders,
    head_importance,
    heads_to_keep,
    neuron_importance,
    neurons_to_keep,
)
from utils.teacher import inspect_teacher, load_teacher  # noqa: E402

BATCH = 64
PLAIN = "none"
COLUMNS = ["seed", "reconstruction", "sentences", "teacher_top1", "top1", "agree_top1", "kl_from_teacher",
           "layer0_bias_norm", "largest_bias_norm", "largest_weight", "chosen_strengths"]  # fmt: skip


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="The teacher (a local folder or a Hub id).")
    parser.add_argument("--data_dir", help="WikiText-2 folder (default: $SITRA_DATA_DIR, else the Hub).")
    parser.add_argument("--block_heads", type=int, required=True, help="Heads kept per layer.")
    parser.add_argument("--ffn_width", type=int, required=True, help="Feed-forward neurons kept per layer.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="Each seed's masks rank and check.")
    parser.add_argument("--reconstructions", nargs="+", default=[PLAIN, *RECONSTRUCTION.names()],
                        choices=[PLAIN, *RECONSTRUCTION.names()])  # fmt: skip
    parser.add_argument("--importance_sentences", type=int, default=2000, help="As build_compound.py's.")
    parser.add_argument("--calibration_sentences", type=int, default=512, help="As build_compound.py's.")
    parser.add_argument("--check_sentences", type=int, default=1000,
                        help="Validation sentences after the importance ones, each model checked on.")  # fmt: skip
    parser.add_argument("--seq_len", type=int, default=40)
    parser.add_argument("--output", type=Path, help="Write the rows here (CSV) as well.")
    args = parser.parse_args(argv)
    device = pick_device(None)
    teacher = load_teacher(inspect_teacher(args.teacher, args.seq_len), device)
    model = teacher.model
    rows = []
    for seed in args.seeds:
        data = load_masked_splits(args.data_dir, teacher.tokenizer, args.seq_len, None, seed)
        ranking = eval_loader(data.validation, BATCH, args.importance_sentences)
        check = eval_loader(data.validation, BATCH, args.check_sentences, skip=args.importance_sentences)
        heads = heads_to_keep(head_importance(model, ranking, device), args.block_heads, per_layer=True)
        kept = neurons_to_keep(neuron_importance(model, ranking, device), args.ffn_width, per_layer=True)
        for reconstruction in args.reconstructions:
            attentions, feed_forwards = pruned_modules(model, dict(enumerate(heads)), dict(enumerate(kept)))
            pruned = assemble(model, attentions=attentions, feed_forwards=feed_forwards).eval()
            chosen = {}
            if reconstruction != PLAIN:
                loaders = calibration_loaders(data.train, BATCH, args.calibration_sentences, reconstruction)
                pruned_layers = {index: (index, keep) for index, keep in enumerate(kept)}
                chosen = RECONSTRUCTION[reconstruction].function(model, pruned, pruned_layers, *loaders, device)
            metrics, _ = evaluate_mlm({"teacher": model, "pruned": pruned}, check, device)
            biases = [layer.ffn_out.bias.norm().item() for layer in pruned.layers]
            found = metrics["pruned"]
            rows.append({
                "seed": seed, "reconstruction": reconstruction, "sentences": found["sentences"],
                "teacher_top1": metrics["teacher"]["top1"], "top1": found["top1"], "agree_top1": found["agree_top1"],
                "kl_from_teacher": found["kl_from_teacher"], "layer0_bias_norm": biases[0],
                "largest_bias_norm": max(biases),
                "largest_weight": max(layer.ffn_out.weight.abs().max().item() for layer in pruned.layers),
                "chosen_strengths": " ".join(str(chosen[index]["strength"]) for index in sorted(chosen)),
            })  # fmt: skip
            row = rows[-1]
            print(f"seed {seed} {reconstruction:>13}: top-1 {100 * row['top1']:.1f}% (teacher "
                  f"{100 * row['teacher_top1']:.1f}%), agreement {100 * row['agree_top1']:.1f}%, KL "
                  f"{row['kl_from_teacher']:.3f}, layer-0 bias {row['layer0_bias_norm']:.1f}, largest weight "
                  f"{row['largest_weight']:.1f}", flush=True)  # fmt: skip
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w", newline="") as file:
            writer = csv.DictWriter(file, COLUMNS)
            writer.writeheader()
            writer.writerows({key: row[key] for key in COLUMNS} for row in rows)
    return rows


if __name__ == "__main__":
    main()
