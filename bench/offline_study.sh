#!/usr/bin/env bash
# The full-data study on the offline teacher: every method at three budgets, trained on all 75,720 WikiText-2
# training sentences, every final model healed with the same budget, evaluated on the whole test split (9,175
# sentences, 95% intervals), the final half-attention and half-depth models trained with two seeds.
#
#   half attention (6 x 32):    retrained blocks assembled | head pruning (6 heads per layer, training-free)
#   quarter attention (3 x 32): retrained blocks assembled | head pruning (3 heads per layer)
#   half depth:                 merged pairs | conditioned chain | averaged pairs (training-free) |
#                               layer drop by rule (alternate, top, influence, angular)
#   also: block 1 trained till the end (the science's step 2; its validation figures are in its run)
#
# One teacher store per seed feeds every block and merge student (one teacher pass each); the store is deleted
# once its students are trained unless KEEP_STORE=1 (about 23 GB at the offline teacher's shape).
# Usage: bash bench/offline_study.sh [STUDY]   (needs the venv of `make setup` and SITRA_DATA_DIR)
# Settings (the defaults fit 2 hours on a 2-core CPU): TEACHER (STUDY/teacher, trained if missing), SEEDS
# ("42 43": the first trains everything, the others repeat the final half-attention and half-depth models in
# STUDY/seed{N}), BLOCK_EPOCHS, MERGE_EPOCHS (1 each over all training sentences), CHAIN_SENTENCES (20,000: the
# conditioned chain warm-starts from the merges), TILL_END_SENTENCES (10,000), HEAL_SENTENCES (8,000: one epoch
# of end-to-end finetuning for every healed model), STUDENT_EVAL_SENTENCES (500: the validation sentences each
# block and merge student is checked on before and after training, a diagnostic; at 2,000 these checks took
# 13 minutes of the study), PERCENT (share of the test split evaluated, 1.0); SENTENCES (default all) caps the
# store's and the students' training sentences, for a smoke run of the script.
# Stage times go to STUDY/study_times.tsv; the report (tables, frontier, seeds, paired comparisons) to
# STUDY/report/. Every run resumes or skips when finished, so a stopped study continues where it was.
set -euo pipefail
cd "$(dirname "$0")/.."
STUDY=${1:-storage/study}
PY=${PY:-.venv/bin/python}
TEACHER=${TEACHER:-$STUDY/teacher}
read -r -a SEEDS <<< "${SEEDS:-42 43}"
BLOCK_EPOCHS=${BLOCK_EPOCHS:-1} MERGE_EPOCHS=${MERGE_EPOCHS:-1}
CHAIN_SENTENCES=${CHAIN_SENTENCES:-20000} TILL_END_SENTENCES=${TILL_END_SENTENCES:-10000}
HEAL_SENTENCES=${HEAL_SENTENCES:-8000} PERCENT=${PERCENT:-1.0} STUDENT_EVAL_SENTENCES=${STUDENT_EVAL_SENTENCES:-500}
ALL=(${SENTENCES:+--max_sentences "$SENTENCES"})
DK=32 HALF=6 QUARTER=3 MERGE_HEADS=12        # the teacher has 12 heads of 32
MERGED=merged_${DK}_${MERGE_HEADS}
mkdir -p "$STUDY"
TIMES=$STUDY/study_times.tsv

# shellcheck source=bench/study_common.sh
source bench/study_common.sh
heal_attention() {  # heal_attention STORAGE SEED MODEL: MODEL_finetuned, the same budget for every model
  $PY train_full_merged_model.py --teacher "$TEACHER" --storage_directory "$1" --seed "$2" --model "$1/models/$3" \
      --max_sentences "$HEAL_SENTENCES" --epochs 1
}
half_depth() {  # half_depth STORAGE SEED MODEL FLAGS...: the half-depth model MODEL, and MODEL_finetuned healed
  local storage=$1 seed=$2 model=$3
  shift 3
  for epochs in 0 1; do  # the healed run continues the training-free one
    $PY finetune_fully_merged.py --teacher "$TEACHER" --storage_directory "$storage" --seed "$seed" \
        --max_sentences "$HEAL_SENTENCES" --block_heads $MERGE_HEADS --block_d_k $DK --epochs $epochs \
        --output_model "$model$([[ $epochs == 0 ]] || echo _finetuned)" "$@"
  done
}
students() {  # students STORAGE SEED HEADS...: the store, every block at each HEADS x 32, every merge pair
  local storage=$1 seed=$2
  shift 2
  local common=(--teacher "$TEACHER" --storage_directory "$storage" --seed "$seed" "${ALL[@]}")
  stage "store (seed $seed)" $PY build_teacher_store.py "${common[@]}"
  common+=(--teacher_store --eval_sentences "$STUDENT_EVAL_SENTENCES")
  stage "blocks $* x $DK (seed $seed)" $PY retrain_single_block.py "${common[@]}" --block all --block_heads "$@" \
      --block_d_k $DK --epochs "$BLOCK_EPOCHS"
  stage "merges (seed $seed)" $PY retrain_merge.py "${common[@]}" --block all --block_heads $MERGE_HEADS \
      --block_d_k $DK --merge_init first --epochs "$MERGE_EPOCHS"
  [[ ${KEEP_STORE:-0} == 1 ]] || rm -rf "$storage"/cache/store_*
}
[ -f "$TEACHER/config.json" ] ||
  stage teacher $PY train_teacher.py --init minilm --max_steps 500 --output_dir "$TEACHER" --storage_directory "$STUDY"

# -- the first seed: every method ---------------------------------------------------------------------------
SEED=${SEEDS[0]}
students "$STUDY" "$SEED" $HALF $QUARTER
stage "till end (block 1)" $PY train_block_till_end.py --teacher "$TEACHER" --storage_directory "$STUDY" --block 1 \
    --block_heads $HALF --block_d_k $DK --max_sentences "$TILL_END_SENTENCES" --epochs 1
attention_models=()
for heads in $HALF $QUARTER; do
  stage "assemble ${heads} x $DK" $PY bench/assemble.py --storage_directory "$STUDY" --teacher "$TEACHER" \
      --block_heads "$heads" --block_d_k $DK
  stage "prune to $heads heads" $PY prune_heads.py --teacher "$TEACHER" --storage_directory "$STUDY" \
      --block_heads "$heads" --per_layer
  for model in retrained_${DK}_$heads pruned_${DK}_$heads; do
    stage "heal $model" heal_attention "$STUDY" "$SEED" "$model"
    attention_models+=("$model" "${model}_finetuned")
  done
done
stage "conditioned chain" $PY finetune_conditioned_fully_merged.py --teacher "$TEACHER" --storage_directory "$STUDY" \
    --all --block_heads $MERGE_HEADS --block_d_k $DK --merge_init first --max_sentences "$CHAIN_SENTENCES" --epochs 1
stage "averaged pairs" $PY retrain_merge.py --teacher "$TEACHER" --storage_directory "$STUDY/average" --block all \
    --block_heads $MERGE_HEADS --block_d_k $DK --merge_init average --epochs 0
# --merge_init names the merge runs a merged model is made of (merge_0_32_12-init_first), as they were trained
stage "heal $MERGED" half_depth "$STUDY" "$SEED" "$STUDY/models/$MERGED" --merge_init first
stage "heal ${MERGED}_conditioned" half_depth "$STUDY" "$SEED" "$STUDY/models/${MERGED}_conditioned" \
    --source conditioned --merge_init first
stage "heal merged_average" half_depth "$STUDY/average" "$SEED" "$STUDY/models/merged_average" --merge_init average
depth_models=("$MERGED" "${MERGED}_finetuned" "${MERGED}_conditioned" "${MERGED}_conditioned_finetuned"
              merged_average merged_average_finetuned)
for rule in alternate top influence angular; do
  stage "heal layer_drop_$rule" half_depth "$STUDY" "$SEED" "$STUDY/models/layer_drop_$rule" --baseline layer_drop \
      --drop $rule
  depth_models+=("layer_drop_$rule" "layer_drop_${rule}_finetuned")
done
stage "evaluate attention models" evaluate "$STUDY" attention "${attention_models[@]}"
stage "evaluate half-depth models" evaluate "$STUDY" half_depth "${depth_models[@]}"

# -- the other seeds: the final half-attention and half-depth models again ----------------------------------
seed_runs=()
for SEED in "${SEEDS[@]:1}"; do
  storage=$STUDY/seed$SEED
  seed_runs+=("$storage")
  students "$storage" "$SEED" $HALF
  stage "assemble (seed $SEED)" $PY bench/assemble.py --storage_directory "$storage" --teacher "$TEACHER" \
      --block_heads $HALF --block_d_k $DK
  stage "heal retrained_${DK}_$HALF (seed $SEED)" heal_attention "$storage" "$SEED" "retrained_${DK}_$HALF"
  stage "heal $MERGED (seed $SEED)" half_depth "$storage" "$SEED" "$storage/models/$MERGED" --merge_init first
  stage "evaluate (seed $SEED)" evaluate "$storage" seed_models "retrained_${DK}_$HALF" \
      "retrained_${DK}_${HALF}_finetuned" "$MERGED" "${MERGED}_finetuned"
done

# -- the report: budget tables, frontier, seeds pooled, the paired differences the README quotes -------------
$PY make_report.py --storage_directory "$STUDY" ${seed_runs[@]:+--seed_runs "${seed_runs[@]}"}
for pair in "${MERGED}_finetuned ${MERGED}_conditioned_finetuned" "${MERGED}_finetuned merged_average_finetuned" \
            "retrained_${DK}_${HALF}_finetuned pruned_${DK}_${HALF}_finetuned" \
            "retrained_${DK}_${QUARTER}_finetuned pruned_${DK}_${QUARTER}_finetuned" \
            "${MERGED}_finetuned layer_drop_alternate_finetuned" "${MERGED}_finetuned layer_drop_top_finetuned" \
            "${MERGED}_finetuned layer_drop_influence_finetuned" "${MERGED}_finetuned layer_drop_angular_finetuned"; do
  $PY make_report.py --storage_directory "$STUDY" --compare $pair
done
awk -F'\t' '{total += $2; printf "%-45s %6.1f min\n", $1, $2 / 60} END {printf "%-45s %6.1f min\n", "total", total / 60}' "$TIMES"
