"""Top-k fill-mask predictions of Hugging Face model folders (a teacher and exported sitra models), loaded
with plain transformers' ``pipeline("fill-mask")``: what a user outside sitra sees.

python bench/fill_mask.py --models storage/teacher exported/merged --sentence "the [MASK] of the river ."
"""

import argparse
import json

from transformers import pipeline


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--models", nargs="+", required=True, help="Hugging Face model folders.")
    parser.add_argument("--sentence", required=True, help="A sentence with one [MASK].")
    parser.add_argument("--top_k", type=int, default=5)
    args = parser.parse_args(argv)
    results = {}
    for folder in args.models:
        custom_code = json.load(open(f"{folder}/config.json"))["model_type"] != "bert"
        fill_mask = pipeline("fill-mask", model=folder, trust_remote_code=custom_code, device="cpu")
        results[folder] = [(p["token_str"], round(p["score"], 3)) for p in fill_mask(args.sentence, top_k=args.top_k)]
        print(f"{folder}: " + ", ".join(f"{token} ({score:.2f})" for token, score in results[folder]))
    return results


if __name__ == "__main__":
    main()
