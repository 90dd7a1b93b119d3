#!/usr/bin/env bash
# The study, round two, in parts that each fit well under 100 minutes on a 2-core CPU and share one teacher
# and one teacher store; every run resumes or skips when finished, so a part stopped by anything continues
# where it was when started again, and a part never redoes another's work.
#
# Run the teacher part first; then criteria, frontier and inits in any order (each trains what it needs and skips
# what another part already trained); then report, which finds the best models; then seeds and whole, which
# retrain / re-evaluate those, and healing, which heals them longer; report again last.
#
#   teacher   MLM-train the offline teacher until validation top-1 gains < 0.5 points per 500 steps
#   criteria  the seed's question: every block at 6 x 32 distilled with MSE, L1, cross-entropy on the attention
#             output's logits and on the attention scores; each block alone in the teacher, and each
#             criterion's six blocks assembled; all on the same test masks
#   inits     teacher-initialised students (--student_init heads, svd) against random at half (6 x 32; 12 x 16,
#             where only svd applies) and a quarter (3 x 32) of the attention, assembled, healed and not
#   frontier  about 67%, 50%, 33% and 25% of the teacher's encoder FLOPs per token: sitra's students
#             (retrained attention + feed-forward students, the attention students random (`sitra_*`) or
#             started from the teacher's heads (`sitra_*_heads`); at 50% and 33% also the budget split the other
#             way, a quarter of the attention and a wider feed-forward (`sitra_*_a3_heads`), and at 67% and 50%
#             the teacher's whole attention with only the feed-forward cut (`sitra_*_ffn`); merged pairs) against
#             the field (head + neuron pruning with least squares, and without it at 33% and 25%; layer drop
#             `top`; DistilBERT-style alternate layers; layer drop + neuron pruning) and the conditioned chain of
#             merged pairs (50%), every model healed alike (every layer, HEAL_SENTENCES sentences);
#             FRONTIER_MODELS="a b ..." builds only those models, and the evaluation (frontier) takes every
#             healed frontier model of the storage
#   seeds     the frontier again with SEED2 (its own store, under STUDY/seed{SEED2}) for the models the
#             conclusions rest on (after the report part: the best of each side per budget, the conditioned
#             chain, top drop; FRONTIER_MODELS overrides): trained twice
#   whole     the same models (SEED) evaluated again on the whole test split (evaluation frontier_whole): the
#             paired differences of the report then use it where both models are in it
#   healing   the same models (or HEAL_MODELS="a b ...") healed on LONG_HEAL_SENTENCES (20000) sentences
#             instead of HEAL_SENTENCES, each evaluated beside its usual healing (evaluation MODEL_heal20000) and
#             compared with it, and sitra's best with the field's where both were: does longer healing close
#             the goals' gaps
#   report    make_report.py (tables, frontier, criteria heatmap, teacher curve, seeds pooled: each model
#             averaged over the seeds, sitra's best against the field's) and the paired differences of the
#             questions above
#
# Usage: bash bench/study.sh PART [STUDY]   (STUDY default storage/study2; needs `make setup` and SITRA_DATA_DIR)
# Settings: TEACHER (STUDY/teacher), TEACHER_STEPS (6000: the most steps the teacher trains if its validation
# top-1 has not stopped gaining before; a run resumes, so raising it continues the teacher), SEED (42), SEED2 (43), SENTENCES (20000 training sentences in the store, for
# every student), STUDENT_EPOCHS (1), HEAL_SENTENCES (4000: one epoch of end-to-end healing for every healed
# model), PERCENT (0.4: the share of the test split evaluated, the same masks for every model),
# CHECK_SENTENCES (300 validation sentences each student checks itself on), ATTENTION_FLAGS (the attention
# students the frontier's compounds take: "" = random init, MSE), INIT_SHAPES (the inits part's "heads d_k"
# shapes, comma-separated: "6 32,3 32,12 16"), EVALUATE_UNHEALED (0: the frontier evaluates its healed models
# only; 1: each before healing too). Stage times: STUDY/study_times.tsv (stage, seconds, part, finished at).
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${1:?usage: bash bench/study.sh teacher|criteria|inits|frontier|seeds|whole|healing|report [STUDY]}
STUDY=${2:-storage/study2}
PY=${PY:-.venv/bin/python}
TEACHER=${TEACHER:-$STUDY/teacher}
SEED=${SEED:-42} SEED2=${SEED2:-43} SENTENCES=${SENTENCES:-20000} STUDENT_EPOCHS=${STUDENT_EPOCHS:-1}
HEAL_SENTENCES=${HEAL_SENTENCES:-4000} PERCENT=${PERCENT:-0.4} CHECK_SENTENCES=${CHECK_SENTENCES:-300}
ATTENTION_FLAGS=${ATTENTION_FLAGS:-} TEACHER_STEPS=${TEACHER_STEPS:-6000}
LONG_HEAL_SENTENCES=${LONG_HEAL_SENTENCES:-20000}
IFS=, read -r -a INIT_SHAPES <<< "${INIT_SHAPES:-6 32,3 32,12 16}"
mkdir -p "$STUDY"
TIMES=$STUDY/study_times.tsv STAGE_PART=$PART
# shellcheck source=bench/study_common.sh
source bench/study_common.sh
# the distillation criteria compared (the seed's three commands, plus L1): code and flags
CRITERIA=("mse:" "l1:--criterion L1" "ce_logits:--criterion CrossEntropy --loss_on_logits"
          "ce_scores:--criterion CrossEntropy --loss_on_scores")

use_storage() {  # use_storage DIR: the storage of the part's runs, and the flags every run there shares
  STORAGE=$1
  COMMON=(--teacher "$TEACHER" --storage_directory "$STORAGE" --seed "$SEED")
}
store() {  # the teacher store every student of the part trains from (kept: the parts share it)
  stage "store (seed $SEED)" "$PY" build_teacher_store.py "${COMMON[@]}" --max_sentences "$SENTENCES"
}
students() {  # students SCRIPT FLAGS...: students of every block from the store
  local script=$1
  shift
  "$PY" "$script" "${COMMON[@]}" --max_sentences "$SENTENCES" --teacher_store --eval_sentences "$CHECK_SENTENCES" \
      --block all --epochs "$STUDENT_EPOCHS" "$@"
}
heal() {  # heal MODEL [FLAGS...]: MODEL_finetuned[variant], one epoch of HEAL_SENTENCES sentences
  local model=$1
  shift
  "$PY" train_full_merged_model.py "${COMMON[@]}" --model "$STORAGE/models/$model" \
      --max_sentences "$HEAL_SENTENCES" --epochs 1 --eval_sentences "$CHECK_SENTENCES" "$@"
}
compound() {  # compound NAME RECIPE: a compound model, skipped when built (another recipe there is refused)
  [ -f "$STORAGE/models/$1/sitra.json" ] || "$PY" build_compound.py "${COMMON[@]}" --name "$1" --recipe "$2"
}
variant_of() {  # variant_of KIND FLAGS: the folder suffix of runs trained with FLAGS (e.g. -ce_logits)
  "$PY" -c 'import sys; from utils.runs import variant_of_command_line as v; print(v(*sys.argv[1:]))' "$1" "$2"
}
teacher_ready() {
  [ -f "$TEACHER/config.json" ] || { echo "error: no teacher at $TEACHER: run 'bash bench/study.sh teacher' first" >&2; exit 1; }
}

part_teacher() {
  [ -f "$TEACHER/config.json" ] && { echo "teacher at $TEACHER is trained"; return; }
  stage teacher "$PY" train_teacher.py --init minilm --epochs 10 --max_steps "$TEACHER_STEPS" --plateau_points 0.5 \
      --plateau_steps 500 --output_dir "$TEACHER" --storage_directory "$STUDY"
}

part_criteria() {
  teacher_ready
  use_storage "$STUDY"
  store
  local models=() code flags
  for entry in "${CRITERIA[@]}"; do
    code=${entry%%:*} flags=${entry#*:}
    # shellcheck disable=SC2086
    stage "blocks 6 x 32, $code" students retrain_single_block.py --block_heads 6 --block_d_k 32 $flags
    # shellcheck disable=SC2086  # the criterion's flags, split
    stage "assemble 6 x 32, $code" "$PY" bench/assemble.py --storage_directory "$STUDY" --teacher "$TEACHER" \
        --block_heads 6 --block_d_k 32 -- $flags
    models+=("retrained_32_6$(variant_of block "$flags")")
    for block in 0 1 2 3 4 5; do  # each block alone in the teacher: its own effect on the test masks
      compound "criterion_${code}_block$block" \
          "{\"attention\": {\"heads\": 6, \"d_k\": 32, \"run_flags\": \"$flags\", \"layers\": [$block]}}"
      models+=("criterion_${code}_block$block")
    done
  done
  stage "evaluate criteria" evaluate "$STUDY" criteria "${models[@]}"
}

part_inits() {
  teacher_ready
  use_storage "$STUDY"
  store
  local models=() shape heads d_k init suffix
  for shape in "${INIT_SHAPES[@]}"; do
    read -r heads d_k <<< "$shape"
    for init in random heads svd; do
      [[ $init == heads && $d_k != 32 ]] && continue  # heads of the teacher keep its d_k
      stage "blocks $heads x $d_k, $init" students retrain_single_block.py --block_heads "$heads" --block_d_k "$d_k" \
          --student_init "$init"
      suffix=$([[ $init == random ]] || echo "-init_$init")
      stage "assemble $heads x $d_k, $init" "$PY" bench/assemble.py --storage_directory "$STUDY" --teacher "$TEACHER" \
          --block_heads "$heads" --block_d_k "$d_k" -- --student_init "$init"
      stage "heal retrained_${d_k}_$heads$suffix" heal "retrained_${d_k}_$heads$suffix"
      models+=("retrained_${d_k}_$heads$suffix" "retrained_${d_k}_$heads${suffix}_finetuned")
    done
  done
  stage "evaluate inits" evaluate "$STUDY" inits "${models[@]}"
}

# the frontier's models: name and recipe (compounds of students and of pruned teacher modules); the layer-drop
# and merged models are made by their own scripts below. FFN is the teacher's width (1536 for the offline one)
FRONTIER_WIDTHS="1152 768 384"  # feed-forward widths of the 67%, 50% / 33% and 25% models at hidden 384
SPLIT_WIDTHS=(960 576)  # the widths that bring 3 x 32 attention to 50% and 33% of the FLOPs (sitra_*_a3_heads)
frontier_recipes() {
  local suffix flags variant budget share heads width
  # sitra's compounds, once with ATTENTION_FLAGS' attention students and once with students started from the
  # teacher's heads (_heads); heads per layer and feed-forward width per budget
  for variant in ":${ATTENTION_FLAGS//\"/\\\"}" "_heads:--student_init heads"; do
    suffix=${variant%%:*} flags=${variant#*:}
    for budget in "67 6 1152" "50 6 768" "33 6 384" "25 3 384"; do
      read -r share heads width <<< "$budget"
      printf 'sitra_%s%s {"attention": {"heads": %s, "d_k": 32, "run_flags": "%s"}, "feed_forward": {"width": %s, "run_flags": "--ffn_init neurons"}}\n' \
          "$share" "$suffix" "$heads" "$flags" "$width"
    done
  done
  # the same budgets split the other way: a quarter of the attention (3 heads) and a wider feed-forward
  printf 'sitra_%s_a3_heads {"attention": {"heads": 3, "d_k": 32, "run_flags": "--student_init heads"}, "feed_forward": {"width": %s, "run_flags": "--ffn_init neurons"}}\n' \
      50 "${SPLIT_WIDTHS[0]}" 33 "${SPLIT_WIDTHS[1]}"
  # and the opposite way: the teacher's whole attention, only the feed-forward cut (half, a quarter)
  printf 'sitra_%s_ffn {"feed_forward": {"width": %s, "run_flags": "--ffn_init neurons"}}\n' 67 768 50 384
  cat <<EOF
field_67_ls {"prune_heads": {"heads": 6}, "prune_neurons": {"width": 1152, "reconstruct": true}}
field_50_ls {"prune_heads": {"heads": 6}, "prune_neurons": {"width": 768, "reconstruct": true}}
field_33 {"prune_heads": {"heads": 6}, "prune_neurons": {"width": 384}}
field_33_ls {"prune_heads": {"heads": 6}, "prune_neurons": {"width": 384, "reconstruct": true}}
field_25 {"prune_heads": {"heads": 3}, "prune_neurons": {"width": 384}}
field_25_ls {"prune_heads": {"heads": 3}, "prune_neurons": {"width": 384, "reconstruct": true}}
drop_top_ffn768_ls {"drop": {"rule": "top", "count": 3}, "prune_neurons": {"width": 768, "reconstruct": true, "layers": [0, 1, 2]}}
drop_top_ffn384_ls {"drop": {"rule": "top", "count": 3}, "prune_neurons": {"width": 384, "reconstruct": true, "layers": [0, 1, 2]}}
drop_top {"drop": {"rule": "top", "count": 3}}
drop_alternate {"drop": {"rule": "alternate", "count": 3}}
EOF
}

wanted() {  # wanted PATTERN: whether the frontier builds a model PATTERN matches (all unless FRONTIER_MODELS)
  local model
  [[ -z ${FRONTIER_MODELS:-} ]] && return 0
  for model in $FRONTIER_MODELS; do
    # shellcheck disable=SC2053  # PATTERN is a glob
    [[ $model == $1 ]] && return 0
  done
  return 1
}

part_frontier() {
  local known name
  known=" merged_32_12 merged_32_12_conditioned $(frontier_recipes | cut -d' ' -f1 | tr '\n' ' ')"
  for name in ${FRONTIER_MODELS:-}; do  # a misspelt name would silently build nothing for it
    [[ $known == *" $name "* ]] || { echo "error: FRONTIER_MODELS: no frontier model '$name' (known:$known)" >&2; exit 2; }
  done
  teacher_ready
  use_storage "$STUDY$([[ $SEED == 42 ]] || echo "/seed$SEED")"
  store
  # the students the wanted models are made of
  # shellcheck disable=SC2086
  wanted 'sitra_[0-9][0-9]' && stage "attention students 6 3 x 32" students retrain_single_block.py \
      --block_heads 6 3 --block_d_k 32 $ATTENTION_FLAGS
  wanted 'sitra_*_heads' && stage "attention students 6 3 x 32, heads" students retrain_single_block.py \
      --block_heads 6 3 --block_d_k 32 --student_init heads
  # shellcheck disable=SC2086
  { wanted 'sitra_[0-9][0-9]' || wanted 'sitra_[0-9][0-9]_heads' || wanted 'sitra_*_ffn'; } &&  # not *_a3_heads
      stage "feed-forward students $FRONTIER_WIDTHS" students retrain_single_block.py --part ffn \
      --ffn_width $FRONTIER_WIDTHS --ffn_init neurons
  wanted 'sitra_*_a3_heads' && stage "feed-forward students ${SPLIT_WIDTHS[*]}" students retrain_single_block.py \
      --part ffn --ffn_width "${SPLIT_WIDTHS[@]}" --ffn_init neurons
  wanted 'merged_*' && stage "merge students" students retrain_merge.py --block_heads 12 --block_d_k 32 \
      --merge_init first
  local models=() recipe
  if wanted merged_32_12; then
    stage "merged pairs" "$PY" finetune_fully_merged.py "${COMMON[@]}" --block_heads 12 --block_d_k 32 \
        --merge_init first --epochs 0 --max_sentences "$HEAL_SENTENCES" --output_model "$STORAGE/models/merged_32_12"
    models+=(merged_32_12)
  fi
  if wanted merged_32_12_conditioned; then  # round one's half-depth winner: each pair sees the merged ones before
    stage "conditioned chain" "$PY" finetune_conditioned_fully_merged.py "${COMMON[@]}" --all --block_heads 12 \
        --block_d_k 32 --merge_init first --max_sentences "$SENTENCES" --epochs "$STUDENT_EPOCHS" \
        --eval_sentences "$CHECK_SENTENCES"
    stage "merged chain" "$PY" finetune_fully_merged.py "${COMMON[@]}" --block_heads 12 --block_d_k 32 \
        --source conditioned --merge_init first --epochs 0 --max_sentences "$HEAL_SENTENCES" \
        --output_model "$STORAGE/models/merged_32_12_conditioned"
    models+=(merged_32_12_conditioned)
  fi
  while read -r name recipe; do
    wanted "$name" || continue
    stage "build $name" compound "$name" "$recipe"
    models+=("$name")
  done < <(frontier_recipes)
  for name in "${models[@]}"; do
    stage "heal $name" heal "$name" --train_layers
  done
  # every frontier model healed in this storage, not only the wanted ones: a run with FRONTIER_MODELS adds its
  # models to the evaluation instead of replacing the others' (EVALUATE_UNHEALED=1 adds each before healing)
  local evaluated=()
  for name in merged_32_12 merged_32_12_conditioned $(frontier_recipes | cut -d' ' -f1); do
    [ -f "$STORAGE/models/${name}_finetuned-layers/sitra.json" ] || continue
    evaluated+=("${name}_finetuned-layers")
    [[ ${EVALUATE_UNHEALED:-0} == 1 ]] && evaluated+=("$name")
  done
  stage "evaluate frontier" evaluate "$STORAGE" frontier "${evaluated[@]}"
}

conclusions() {  # the models the frontier's conclusions rest on, which the seeds part trains again: sitra's and
  # the field's best at each budget under SEED (the report's best_against_field.json), the conditioned chain and
  # the top-half drop it is measured against
  local best=$STUDY/report/best_against_field.json
  [ -f "$best" ] || { echo "error: no $best: run the frontier and report parts first" >&2; exit 1; }
  "$PY" -c 'import json, sys
best = sorted({row[side].removesuffix("_finetuned-layers") for row in json.load(open(sys.argv[1])) for side in ("first", "second")})
print(" ".join(best + [name for name in ("merged_32_12_conditioned", "drop_top") if name not in best]))' "$best" || exit 1
}

part_whole() {  # the models the conclusions rest on, evaluated again on the whole test split (after report)
  teacher_ready
  use_storage "$STUDY"
  local names models PERCENT=1.0  # evaluate reads PERCENT
  names=$(conclusions)
  read -r -a models <<< "$names"
  stage "evaluate the conclusions' models, whole test split" evaluate "$STORAGE" frontier_whole \
      "${models[@]/%/_finetuned-layers}"
}

part_healing() {  # the conclusions' models (or HEAL_MODELS) healed on LONG_HEAL_SENTENCES sentences, evaluated
  # beside their usual healing on the same masks (after frontier and report): what longer healing gains
  teacher_ready
  use_storage "$STUDY"
  local names models name long=_heal$LONG_HEAL_SENTENCES HEAL_SENTENCES=$LONG_HEAL_SENTENCES  # heal reads it
  names=${HEAL_MODELS-$(conclusions)}
  read -r -a models <<< "$names"
  for name in "${models[@]}"; do  # every model named is built before anything heals
    [ -f "$STORAGE/models/$name/sitra.json" ] || {
      echo "error: no model $STORAGE/models/$name to heal longer (run the frontier part first)" >&2
      exit 1
    }
  done
  local pairs=()
  for name in "${models[@]}"; do
    # its own storage for the run: a healing run is named after the model it heals, so in STUDY it would be
    # the usual healing's run, refused for its other data
    stage "heal $name, $LONG_HEAL_SENTENCES sentences" heal "$name" --train_layers \
        --output_model "$STORAGE/models/$name$long" --storage_directory "$STUDY/longer_healing"
    # one evaluation per model, so a later HEAL_MODELS list adds evaluations instead of replacing this one;
    # every evaluation draws the same masks (same data flags), so models of different ones still pair up
    [ -f "$STORAGE/results/$name$long/metrics.json" ] ||
        stage "evaluate $name$long" evaluate "$STORAGE" "$name$long" "$name$long" "${name}_finetuned-layers"
    pairs+=("$name$long" "${name}_finetuned-layers")  # its longer healing against its usual one
  done
  # sitra's best against the field's at each budget, and the chain against top drop, where both were healed
  # longer (the best after the report part)
  local best=$STUDY/report/best_against_field.json best_pairs=()
  [ -f "$best" ] && read -r -a best_pairs <<< "$("$PY" -c 'import json, sys
healed, long = set(sys.argv[3:]), sys.argv[2]
rows = json.load(open(sys.argv[1])) + [{"first": "merged_32_12_conditioned", "second": "drop_top"}]
for row in rows:
    pair = [row[side].removesuffix("_finetuned-layers") for side in ("first", "second")]
    if set(pair) <= healed:
        print(*(name + long for name in pair), end=" ")' "$best" "$long" "${models[@]}")" && pairs+=("${best_pairs[@]}")
  "$PY" make_report.py --storage_directory "$STUDY" --compare "${pairs[@]}" || true
}

part_report() {
  local seeds=()
  [ -d "$STUDY/seed$SEED2" ] && seeds=(--seed_runs "$STUDY/seed$SEED2")
  # the per-block models of the criteria evaluation are for the heatmap, not the frontier
  "$PY" make_report.py --storage_directory "$STUDY" --frontier_evaluations frontier inits "${seeds[@]}"
  local pairs=()
  for entry in "${CRITERIA[@]:1}"; do  # every criterion against MSE, assembled and per block
    code=${entry%%:*}
    suffix=$(variant_of block "${entry#*:}")
    pairs+=("retrained_32_6$suffix retrained_32_6")
    for block in 0 1 2 3 4 5; do
      pairs+=("criterion_${code}_block$block criterion_mse_block$block")
    done
  done
  for shape in 32_6 32_3 16_12; do
    for init in heads svd; do
      [[ $init == heads && $shape == 16_12 ]] && continue
      pairs+=("retrained_${shape}-init_$init retrained_$shape"
              "retrained_${shape}-init_${init}_finetuned retrained_${shape}_finetuned")
    done
  done
  for budget in 67 50 33 25; do  # students against pruning, and started from the teacher's heads against random
    pairs+=("sitra_${budget}_finetuned-layers field_${budget}_ls_finetuned-layers"
            "sitra_${budget}_heads_finetuned-layers field_${budget}_ls_finetuned-layers"
            "sitra_${budget}_heads_finetuned-layers sitra_${budget}_finetuned-layers")
  done
  pairs+=("merged_32_12_conditioned_finetuned-layers drop_top_finetuned-layers"
          "merged_32_12_conditioned_finetuned-layers merged_32_12_finetuned-layers"
          "merged_32_12_finetuned-layers drop_top_finetuned-layers" "sitra_50_finetuned-layers drop_top_finetuned-layers"
          "sitra_33_finetuned-layers drop_top_ffn768_ls_finetuned-layers"
          "sitra_25_finetuned-layers drop_top_ffn384_ls_finetuned-layers"
          "sitra_50_a3_heads_finetuned-layers sitra_50_heads_finetuned-layers"  # the budget split the other way
          "sitra_33_a3_heads_finetuned-layers sitra_33_heads_finetuned-layers"
          "sitra_67_ffn_finetuned-layers sitra_67_heads_finetuned-layers"  # and the opposite way
          "sitra_50_ffn_finetuned-layers sitra_50_heads_finetuned-layers")
  # one process for every pair; a pair whose models were not evaluated (a part not run) is named, not fatal
  # shellcheck disable=SC2068
  "$PY" make_report.py --storage_directory "$STUDY" --compare ${pairs[@]} || true
  if [[ ${#seeds[@]} -gt 0 ]]; then  # the second seed alone, and the chain against top drop averaged over both
    "$PY" make_report.py --storage_directory "$STUDY/seed$SEED2" --frontier_evaluations frontier
    "$PY" make_report.py --storage_directory "$STUDY" "${seeds[@]}" \
        --compare merged_32_12_conditioned_finetuned-layers drop_top_finetuned-layers || true
  fi
  # every stage, then the minutes of each part (stages written before parts were recorded: "?")
  awk -F'\t' '{total += $2; part[$3 == "" ? "?" : $3] += $2; printf "%-10s %-45s %6.1f min\n", $3, $1, $2 / 60}
      END {for (p in part) printf "%-10s %-45s %6.1f min\n", p, "(part total)", part[p] / 60
           printf "%-10s %-45s %6.1f min\n", "", "total", total / 60}' "$TIMES"
}

case $PART in
  teacher | criteria | inits | frontier | whole | healing | report) "part_$PART" ;;
  seeds)
    wanted_models=${FRONTIER_MODELS-$(conclusions)}  # a failed conclusions stops here (set -e)
    SEED=$SEED2 FRONTIER_MODELS=$wanted_models part_frontier ;;
  *) echo "error: PART must be teacher, criteria, inits, frontier, seeds, whole, healing or report, got '$PART'" >&2; exit 2 ;;
esac
