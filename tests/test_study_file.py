"""A study file refuses what it cannot mean: each malformed variant of a good bert-large study (tests/studies/)
is one error naming the file, its line where known, the key and the bad value, at plan time and before anything
is written; the schema's key reference in docs/OPERATIONS.md is generated from the schema."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from utils import study_file
from utils.errors import UserError
from utils.study import Plan, Study, schema_enums

GOOD = REPO / "tests" / "studies" / "bert_large.yaml"

# (what is changed: old text -> new text of the good file, the error expected: a regex on the message)
# fmt: off
MALFORMED = {
    "a family written twice": ("  field_ls:\n    method: pruning", "  sitra_heads:\n    method: pruning",
                               r":19: key 'sitra_heads' written twice \(first on line 14"),
    "a data key written twice": ("  seq_len: 40", "  seq_len: 40\n  seq_len: 20", r"key 'seq_len' written twice"),
    "a budget listed twice": ("budgets: [0.5, 0.25]", "budgets: [0.5, 0.25, 0.5]", r":12: budgets: .* each item once"),
    "a seed listed twice": ("seeds: [1, 2]", "seeds: [1, 1]", r":11: seeds: \[1, 1\]: each item once"),
    "a negative seed": ("seeds: [1, 2]", "seeds: [1, -2]", r":11: seeds.1: -2: expected a value >= 0"),
    "a seed that is text": ("seeds: [1, 2]", "seeds: [1, two]", r"seeds.1: 'two': expected integer"),
    "no seeds": ("seeds: [1, 2]", "seeds: []", r":11: seeds: \[\]: expected at least 1 item"),
    "a budget of 50": ("budgets: [0.5, 0.25]", "budgets: [50, 0.25]", r"budgets.0: 50: expected a value <= 1"),
    "a budget of 0": ("budgets: [0.5, 0.25]", "budgets: [0, 0.25]", r"budgets.0: 0: expected a value > 0"),
    "a comparison of a family with itself": ("  - [chain, drop_top]", "  - [chain, chain]",
                                             r":45: comparisons: \['chain', 'chain'\] compares a family with itself"),
    "a comparison with an unknown family": ("  - [chain, drop_top]", "  - [chain, drop]",
                                            r"comparisons: \['chain', 'drop'\]: no family drop in the study"),
    "a comparison of three": ("  - [chain, drop_top]", "  - [chain, drop_top, field_ls]", r"comparisons.1: .*"),
    "a comparison written twice": ("  - [chain, drop_top]", "  - [chain, drop_top]\n  - [chain, drop_top]",
                                   r"comparisons: .* each item once"),
    "merge_init firts": ("merge: {merge_init: first}", "merge: {merge_init: firts}",
                         r"the merge_students stage .* retrain_merge.py: .*--merge_init.*firts"),
    "student_init head": ("attention: {student_init: heads}", "attention: {student_init: head}",
                          r"attention_students stage .* retrain_single_block.py: .*--student_init.*head"),
    "a healing flag typo": ("kl: {train_layers: true}", "kl: {train_layer: true}",
                            r"the heal stage seed1/kl .* train_full_merged_model.py: .*--train_layer"),
    "a healing flag value it refuses": ("healing: layerwise}", "healing: layer_wise}",
                                        r"heal stage seed1/layerwise .*layer_wise"),
    "a teacher training flag typo": ("teacher: {path: bert-large-uncased, shape: bert-large}",
                                     "teacher: {train: {init: minilm, max_step: 3}, shape: minilm}",
                                     r"the teacher stage .* train_teacher.py: .*--max_step"),
    "a goal of 1.5": ("goals: {0.5: 0.97, 0.25: 0.92}", "goals: {0.5: 1.5, 0.25: 0.92}",
                      r":47: goals.0.5: 1.5: expected a value <= 1"),
    "a goal at a budget the study lacks": ("goals: {0.5: 0.97, 0.25: 0.92}", "goals: {0.33: 0.95}",
                                           r":47: goals: a share of the teacher's top-1 per budget of the study"),
    "heal_epochs -1": ("  heal_sentences: 1000", "  heal_sentences: 1000\n  heal_epochs: -1",
                       r":8: data.heal_epochs: -1: expected a value >= 1"),
    "test_share 2": ("  test_share: 1.0", "  test_share: 2", r":9: data.test_share: 2: expected a value <= 1"),
    "seq_len forty": ("  seq_len: 40", "  seq_len: forty", r":10: data.seq_len: 'forty': expected integer"),
    "an unknown data key": ("  seq_len: 40", "  seq_len: 40\n  epochs: 3",
                            r":11: data.epochs: unknown key 'epochs' \(expected one of batch_size, check_sentences"),
    "an unknown top-level key": ("seeds: [1, 2]", "seed: [1, 2]", r":11: seed: unknown key 'seed'"),
    "a precision it has not": ("  seq_len: 40", "  seq_len: 40\n  precision: fp8",
                               r"data.precision: 'fp8': expected one of None, auto, fp32, bf16, fp16"),
    "a misspelt resource kind": ("  store: {mem_mb: 32000}", "  stores: {mem_mb: 32000}",
                                 r"resources: 'stores': expected one of default, teacher, store"),
    "a site's gres in a study": ("  store: {mem_mb: 32000}", "  heal: {gres: 'gpumem:24g'}",
                                 r"resources.heal.gres: unknown key 'gres' \(expected one of cpus_per_task"),
    "a runtime that is text": ("runtime: 240", "runtime: long", r"resources.default.runtime: 'long': expected integer"),
    "a misspelt drop rule": ("    rule: top", "    rule: topp", r"families.drop_top.rule: 'topp': expected one of"),
    "a drop rule the plan cannot know ahead": ("    rule: top", "    rule: influence",
                                               r"families.drop_top.rule: 'influence': expected one of"),
    "an unknown method": ("    method: pruning", "    method: prune", r"families.field_ls.method: 'prune'"),
    "an option of another method": ("    rule: top", "    rule: top\n    merge: {merge_init: first}",
                                    r"families.drop_top: layer_drop takes no \['merge'\]"),
    "a reconstruction it has not": ("    reconstruct: true\n  drop", "    reconstruct: ridge\n  drop",
                                    r"families.field_ls.reconstruct: 'ridge'"),
    "an attention share above 1": ("{default: 0.5, 0.25: 0.25}\n    attention:",
                                   "{default: 1.5, 0.25: 0.25}\n    attention:",
                                   r":16: families.sitra_heads.attention_share.default: 1.5: expected a value <= 1"),
    "a share mapping missing a budget": ("{default: 0.5, 0.25: 0.25}\n    attention:", "{0.25: 0.25}\n    attention:",
                                         r"families.sitra_heads: attention_share: no share for budget \[0.5\]"),
    "a family budget the study lacks": ("    budgets: [0.5]", "    budgets: [0.33]",
                                        r"families.chain: budgets: each must be one of the study's"),
    "a family name with a space": ("  drop_top:", "  drop top:", r"families: 'drop top': not a valid name here"),
    "a teacher with path and train": ("teacher: {path: bert-large-uncased, shape: bert-large}",
                                      "teacher: {path: bert-large-uncased, train: {init: minilm}}",
                                      r":4: teacher: expected exactly one of 'path'"),
    "a shape it does not know": ("shape: bert-large}", "shape: bert-huge}", r"teacher.shape: 'bert-huge'"),
    "not YAML": ("seeds: [1, 2]", "seeds: [1, 2", r":\d+: not YAML"),
    "a list, not a mapping": ("name: large", "- name: large", r"not YAML|expected a mapping"),
    "a variant of a family the study lacks": ("families: [sitra_heads, field_ls]", "families: [sitra_heads, field]",
                                              r":\d+: variants.heal_all.families: \['field'\] are not families"),
    "a variant budget the study lacks": ("budgets: [0.25]\n", "budgets: [0.33]\n",
                                         r"variants.bf16.budgets: each must be one of the study's"),
    "a variant's unknown key": ("    seeds: [1]\n", "    seed: [1]\n", r"variants.bf16.seed: unknown key 'seed'"),
    "a variant's data typo": ("data: {precision: bf16}", "data: {precison: bf16}",
                              r"variants.bf16.data.precison: unknown key"),
    "a variant name with a capital": ("  bf16:", "  BF16:", r"variants: 'BF16': not a valid name here"),
    "a comparison of a variant the study lacks": ("[sitra_heads@heal_all, field_ls@heal_all]",
                                                  "[sitra_heads@heal_al, field_ls@heal_all]",
                                                  r"comparisons: 'sitra_heads@heal_al' names no variant"),
    "a comparison of a family a variant lacks": ("[sitra_heads@heal_all, field_ls@heal_all]",
                                                 "[sitra_heads@heal_all, drop_top@heal_all]",
                                                 r"drop_top@heal_all'\]: no family drop_top in variant heal_all"),
    "a variant on other masks": ("data: {precision: bf16}", "data: {precision: bf16, test_share: 0.5}",
                                 r"variants.bf16.data: \['test_share'\] would evaluate it on other masks"),
    "a variant with none of the study's seeds": ("    seeds: [1]\n", "    seeds: [7]\n",
                                                 r"variants.bf16.seeds: \[7\] shares no seed with the study's"),
    "a comparison neither a pair nor best": ("  - [chain, drop_top]\n", "  - [chain, drop_top]\n  - bst\n",
                                             r"comparisons.2: 'bst'"),
    "a missing families": ("families:\n", "familys:\n", r"unknown key 'familys'|needs 'families'"),
}
# fmt: on


def malformed(tmp_path: Path, old: str, new: str) -> Path:
    text = GOOD.read_text()
    assert old in text, f"the good study has no {old!r}"
    path = tmp_path / "study.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_the_good_study_plans(tmp_path):
    plan = Plan(Study.load(GOOD), tmp_path / "root", sys.executable)
    # 7 of the study's own recipe, 4 healed longer, 3 in bf16 at 25%
    assert len(plan.models) == 14 and "disk: each store at most" in plan.describe()


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_study_is_one_error_naming_the_file_the_key_and_the_value(tmp_path, case):
    old, new, message = MALFORMED[case]
    path = malformed(tmp_path, old, new)
    with pytest.raises(UserError, match=message) as caught:
        Plan(Study.load(path), tmp_path / "root", sys.executable)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "root").exists()


def test_at_least_thirty_malformed_studies_are_tried():
    assert len(MALFORMED) >= 30


def test_a_storage_root_under_a_file_is_refused_before_planning(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"storage: .*file is a file: expected a folder"):
        Plan(Study.load(GOOD), tmp_path / "file" / "root", sys.executable)


def test_two_budgets_that_name_one_model_are_refused(tmp_path):
    path = malformed(tmp_path, "budgets: [0.5, 0.25]", "budgets: [0.5, 0.25, 0.251]")
    text = path.read_text().replace("goals: {0.5: 0.97, 0.25: 0.92}", "goals: {}")
    path.write_text(text)
    twice = r"budgets: two models named \['drop_top_25', 'field_ls_25', 'field_ls_25@heal_all', 'sitra_heads_25', "
    with pytest.raises(UserError, match=twice):
        Plan(Study.load(path), tmp_path / "root", sys.executable)


def test_snakemake_says_a_bad_study_in_one_line_and_writes_nothing(tmp_path):
    """Through the workflow (every malformed study above raises the same UserError the Snakefile prints): the
    plan-time parse of a stage's flags, the last and slowest check."""
    old, new, message = MALFORMED["merge_init firts"]
    path = malformed(tmp_path, old, new)
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "-d", str(work), "-n",
         "--config", f"study={path}", f"storage={tmp_path / 'root'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert run.returncode == 2 and len(errors) == 1 and re.search(message, errors[0]), run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "root").exists() and not list(work.iterdir())


def test_the_committed_studies_fit_the_schema():
    for path in sorted((REPO / "studies").glob("*.yaml")):
        Study.load(path)


def test_operations_key_reference_is_the_schemas():
    page = (REPO / "docs" / "OPERATIONS.md").read_text()
    marker = r"<!-- generated: study_keys from workflow/schemas/study.schema.yaml -->\n(.*?)<!-- end generated -->"
    section = re.search(marker, page, re.DOTALL)
    assert section and section.group(1) == study_file.key_reference(schema_enums())
    for key in ("data.heal_sentences", "families.NAME.reconstruct", "goals", "resources"):
        assert f"| `{key}` |" in section.group(1)


def test_the_slurm_profile_asks_for_a_signal_and_passes_the_executors_checks():
    """The profile's resources as the SLURM executor checks them when it submits (a dry run does not): every
    stage kind's, over default-resources; and a signal long enough before the time limit for a checkpoint."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    import yaml
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    profile = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())

    class Resources(dict):
        __getattr__ = dict.get

    default = profile["default-resources"]
    signal = re.fullmatch(r"'--signal=TERM@(\d+)'", default["slurm_extra"])  # to the step: the script gets it
    assert signal and int(signal.group(1)) >= 300  # seconds before the limit
    assert "trap '' TERM USR1;" in (REPO / "workflow" / "rules" / "stages.smk").read_text()  # the shell waits
    for own in [{}, *profile["set-resources"].values()]:
        resources = {**default, **own, "slurm_extra": default["slurm_extra"].strip("'")}
        job = type("Job", (), {"resources": Resources(resources)})()
        validate_slurm_extra(job)
        set_gres_string(job)
