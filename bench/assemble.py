"""Run the assembly notebook headless with parameters, as papermill would (for the bench scripts).

python bench/assemble.py --storage_directory S --teacher T --block_heads 6 --block_d_k 32 [--source till_end] \
    [-- --criterion CrossEntropy --loss_on_logits]

Flags after ``--`` are the variant flags the runs were trained with (the notebook's ``run_flags``): they
pick the runs' folders (``block_5_32_6-ce_logits``) and name the assembled model alike.
"""

import argparse
import shlex
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "build_bert_from_retrained_12.ipynb"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    for name in ("storage_directory", "teacher"):
        parser.add_argument(f"--{name}", required=True)
    for name in ("block_heads", "block_d_k"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--source", choices=("block", "till_end"), default="block")
    parser.add_argument("--ffn_width", type=int, help="Also put in the feed-forward students of this width.")
    parser.add_argument("--ffn_run_flags", default="", help="The feed-forward runs' variant flags, as one string.")
    parser.add_argument("--data_dir", help="WikiText-2 folder of the notebook's check (default: $SITRA_DATA_DIR).")
    parser.add_argument("--eval_sentences", type=int, default=300, help="Test sentences the notebook checks.")
    parser.add_argument("--recipe", help="A compound recipe (JSON text or file): build that model instead.")
    parser.add_argument("--compound_name", default="compound", help="The compound model's name.")
    parser.add_argument("--executed", help="Also save the executed notebook here.")
    parser.add_argument("run_flags", nargs="*", help="The runs' variant flags, after --.")
    args = parser.parse_args(argv)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    values = {key: value for key, value in vars(args).items() if key != "executed"}
    values["run_flags"] = shlex.join(args.run_flags)
    cell.source += "\n" + "\n".join(f"{key} = {value!r}" for key, value in values.items())
    NotebookClient(
        notebook, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parents[1])}}
    ).execute()
    if args.executed:
        nbformat.write(notebook, args.executed)


if __name__ == "__main__":
    main()
