"""One-off (issue 56): round three's 18 part data folders (docs/data/round3_*) into one, docs/data/round3, laid out as
the one study file studies/round3.yaml plans it: each part's evaluations under its variant's seed folder, each healed
model under its new name (the variant after an @), the copies several parts made of one model kept once (each
checked equal to the copy kept), then the study's tables made again from those raw results alone.

    python migrate_round3.py [CELL]   # run once, then deleted (git keeps it)

CELL: issue 57's bf16 cell, run as round3_33_seeds.yaml's variant bf16 after the parts were committed: its root's
data folder (``make_report.py --study`` wrote its ``raw/``), taken in as round3.yaml's variant heal_all_bf16.
"""

import csv
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from utils.study import Plan, Study, healed_name, seed_folder
from utils.study_report import write_study_data

DATA = Path("docs/data")
BEFORE = "dbcfad1"  # the last commit with the parts
# each part and the variant of studies/round3.yaml whose recipe it ran (docs: the parts' study files, by git);
# in this order a model is kept from the first part that has it (round3_drop_heal_all's drop_top_ls_50 before
# round3_50_chain's, which was healed again: the same top-1, a KL a few 1e-3 apart)
PARTS = {
    "round3_67": "", "round3_50": "", "round3_33": "", "round3_25": "",
    "round3_drop_heal_all": "heal_all", "round3_67_heal_all": "heal_all", "round3_50_heal_all": "heal_all",
    "round3_33_heal_all": "heal_all", "round3_25_heal_all": "heal_all", "round3_33_heal_all_validated": "heal_all",
    "round3_67_heal_all_seeds": "heal_all", "round3_50_heal_all_seeds": "heal_all",
    "round3_25_heal_all_seeds": "heal_all", "round3_33_seeds": "heal_all", "round3_50_chain": "heal_all",
    "round3_one_epoch": "one_epoch", "round3_seeds": "one_epoch_layerwise",
    "round3_seeds_validated": "one_epoch_layerwise",
}  # fmt: skip
# a variant of a part's own, under its raw/{variant}/: round3_33_seeds's bf16 (issue 57), round3.yaml's heal_all_bf16
PART_VARIANTS = {("round3_33_seeds", "bf16"): "heal_all_bf16"}
NOT_COMPARED = ("kl_from_teacher", "agree_top1", "teacher_top1_in_top5")  # drop_top_ls_50's second healing's


def new_name(old: str, variant: str) -> str:
    old = old.split("@")[0]  # a part's own variant's name: sitra_heads_33_layerwise@bf16
    if old == "teacher" or not variant:
        return old
    model, _, healing = old.rpartition("_")  # {family}_{pct}_{healing}
    return healed_name(f"{model}@{variant}", healing)


def gather(parts: Path, cell: Path | None) -> dict:
    """Every part's evaluations (``parts``: docs/data as committed at :data:`BEFORE`; ``cell``: the bf16 cell's data
    folder) by variant, seed and split."""
    evaluations = {}  # (variant, seed folder, split) -> (metrics, arrays, where each model came from)
    found = [(part, variant, path) for part, variant in PARTS.items()
             for path in sorted((parts / part / "raw").glob("seed*/results/*"))]  # fmt: skip
    found += [(part, variant, path) for (part, own), variant in PART_VARIANTS.items() if cell
              for path in sorted((cell / "raw" / own).glob("seed*/results/*"))]  # fmt: skip
    for part, variant, results in found:
        seed, split = results.parent.parent.name, results.name
        metrics = json.loads((results / "metrics.json").read_text())
        with np.load(results / "per_sentence.npz") as loaded:
            arrays = dict(loaded)
        key = variant, seed, split
        kept, kept_arrays, source = evaluations.setdefault(key, ({**metrics, "models": {}}, {}, {}))
        assert metrics["masks"] == kept["masks"], (part, key)
        for old, values in metrics["models"].items():
            name = new_name(old, variant)
            mine = {f"{name}/{k.split('/', 1)[1]}": v for k, v in arrays.items() if k.split("/")[0] == old}
            if name in kept["models"]:  # a copy: the same model, or the teacher
                same = [k for k in mine if not k.endswith(NOT_COMPARED) or name == "teacher"]
                unequal = [k for k in same if not np.array_equal(mine[k], kept_arrays[k])]
                assert not unequal, (part, key, name, unequal, source[name])
                continue
            kept["models"][name] = values
            kept_arrays.update(mine)
            source[name] = part
        kept_arrays.update({k: v for k, v in arrays.items() if "/" not in k})  # the masks' key, where written
    return evaluations


def main() -> None:
    study = Study.load("studies/round3.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", BEFORE, "docs/data"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        cell = Path(sys.argv[1]) if len(sys.argv) > 1 else None
        evaluations = gather(Path(tmp) / "docs" / "data", cell)
        root = Path(tmp) / "round3"
        for (variant, seed, split), (metrics, arrays, source) in evaluations.items():
            folder = root / seed_folder(seed.removeprefix("seed"), variant) / "results" / split
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
            np.savez_compressed(folder / "per_sentence.npz", **arrays)
            print(variant or "(own)", seed, split, len(metrics["models"]), "models from", sorted(set(source.values())))
        for (_, own), variant in PART_VARIANTS.items() if cell else ():  # the FLOPs its stages counted, renamed
            counted = cell / "raw" / "flops" / own
            for path in sorted(counted.rglob("*.json")):
                target = root / "flops" / variant / path.relative_to(counted)
                target = target.with_name(target.name.replace(f"@{own}", f"@{variant}"))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(path.read_text().replace(f"@{own}", f"@{variant}"))
        plan = Plan(study, root, sys.executable)
        written = write_study_data(plan)
        target = DATA / "round3"
        for name in ("models", "comparisons", "about", "frontier", "compute", "raw"):
            if name in written:
                destination = target / Path(written[name]).name
                if destination.is_dir():
                    shutil.rmtree(destination)
                (shutil.copytree if Path(written[name]).is_dir() else shutil.copyfile)(written[name], destination)
    # what each part's stages took, kept beside the study's own (history: the study column says which part ran
    # them); the students' curves stay the study's own recipe's (the parts' are in git history)
    for table in ("stage_times",):
        rows, columns = [], []
        for part in ["round3", *PARTS]:
            path = f"docs/data/{part}/{table}.csv"  # as committed before the migration (it rewrites round3's)
            shown = subprocess.run(["git", "show", f"{BEFORE}:{path}"], capture_output=True, text=True)
            if shown.returncode == 0:
                reader = csv.DictReader(io.StringIO(shown.stdout))
                columns += [c for c in reader.fieldnames if c not in columns]
                rows += list(reader)
        if len(sys.argv) > 1 and (Path(sys.argv[1]) / f"{table}.csv").is_file():  # the bf16 cell's stages
            with open(Path(sys.argv[1]) / f"{table}.csv", newline="") as file:
                reader = csv.DictReader(file)
                columns += [c for c in reader.fieldnames if c not in columns]
                rows += [row for row in reader if row["seed"].startswith("bf16/")]
        with open(DATA / "round3" / f"{table}.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
