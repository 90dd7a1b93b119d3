#!/usr/bin/env bash
# Every simplification method at two budgets on the offline teacher, each without and with the same healing
# (end-to-end finetuning), evaluated on the same test masks; then make_report.py's budget tables and frontier.
#   half the attention: retrained 6 x 32 attentions (assembled) | head pruning, 6 heads per layer (no training)
#   half the depth:     merged pairs | training-free averaged pairs | layer drop by rule (alternate, top,
#                       influence, angular)
# Usage: bash bench/methods.sh [STORAGE]   (needs the venv of `make setup` and SITRA_DATA_DIR)
# Settings: TEACHER (default STORAGE/teacher, trained if missing), SENTENCES (2000 training sentences per run),
# HEAL_EPOCHS (1), PERCENT (share of the test split evaluated, 1.0).
set -euo pipefail
cd "$(dirname "$0")/.."
STORAGE=${1:-storage/methods}
PY=${PY:-.venv/bin/python}
TEACHER=${TEACHER:-$STORAGE/teacher}
SENTENCES=${SENTENCES:-2000} HEAL_EPOCHS=${HEAL_EPOCHS:-1} PERCENT=${PERCENT:-1.0}
HEADS=6 DK=32 MERGE_HEADS=12 MERGE_DK=32
MODELS=$STORAGE/models
COMMON=(--teacher "$TEACHER" --max_sentences "$SENTENCES")
EVAL=(--teacher "$TEACHER" --storage_directory "$STORAGE" --percentage_data "$PERCENT" --reference none --latency_repeats 0)
[ -f "$TEACHER/config.json" ] || $PY train_teacher.py --init minilm --max_steps 500 --output_dir "$TEACHER" --storage_directory "$STORAGE"
LAYERS=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['num_hidden_layers'])" "$TEACHER/config.json")
heal() {  # heal MODEL_DIR: finetune a saved half-attention model end to end, saved as MODEL_DIR_finetuned
  $PY train_full_merged_model.py "${COMMON[@]}" --storage_directory "$STORAGE" --model "$1" --epochs "$HEAL_EPOCHS"
}

# -- half the attention ------------------------------------------------------------------------------------
for ((block = 0; block < LAYERS; block++)); do
  $PY retrain_single_block.py "${COMMON[@]}" --storage_directory "$STORAGE" --block $block --block_heads $HEADS \
      --block_d_k $DK --epochs 2 --cache_teacher
done
$PY bench/assemble.py --storage_directory "$STORAGE" --teacher "$TEACHER" --block_heads $HEADS --block_d_k $DK
$PY prune_heads.py --teacher "$TEACHER" --storage_directory "$STORAGE" --block_heads $HEADS --per_layer
for model in "retrained_${DK}_${HEADS}" "pruned_${DK}_${HEADS}"; do
  heal "$MODELS/$model"
  for variant in "$model" "${model}_finetuned"; do $PY eval_retrained_12.py "${EVAL[@]}" --model "$MODELS/$variant"; done
done

# -- half the depth -----------------------------------------------------------------------------------------
fully_merged() {  # fully_merged STORAGE NAME INIT: the merged model of STORAGE's --merge_init INIT runs, then healed
  $PY finetune_fully_merged.py "${COMMON[@]}" --storage_directory "$1" --block_heads $MERGE_HEADS --block_d_k $MERGE_DK \
      --merge_init "$3" --epochs 0 --output_model "$MODELS/$2"
  $PY finetune_fully_merged.py "${COMMON[@]}" --storage_directory "$1" --block_heads $MERGE_HEADS --block_d_k $MERGE_DK \
      --merge_init "$3" --epochs "$HEAL_EPOCHS" --output_model "$MODELS/${2}_finetuned"
}
for ((block = 0; block + 1 < LAYERS; block += 2)); do
  $PY retrain_merge.py "${COMMON[@]}" --storage_directory "$STORAGE" --block $block --block_heads $MERGE_HEADS \
      --block_d_k $MERGE_DK --merge_init first --epochs 2 --cache_teacher
  $PY retrain_merge.py "${COMMON[@]}" --storage_directory "$STORAGE/average" --block $block --block_heads $MERGE_HEADS \
      --block_d_k $MERGE_DK --merge_init average --epochs 0
done
fully_merged "$STORAGE" "merged_${MERGE_DK}_${MERGE_HEADS}" first
fully_merged "$STORAGE/average" "merged_average" average
half_depth=("$MODELS/merged_${MERGE_DK}_${MERGE_HEADS}" "$MODELS/merged_${MERGE_DK}_${MERGE_HEADS}_finetuned"
            "$MODELS/merged_average" "$MODELS/merged_average_finetuned")
for rule in alternate top influence angular; do
  name=layer_drop_$rule
  for epochs in 0 "$HEAL_EPOCHS"; do  # the healed run continues the training-free one
    output=$MODELS/$name$([[ $epochs == 0 ]] || echo _finetuned)
    $PY finetune_fully_merged.py "${COMMON[@]}" --storage_directory "$STORAGE" --baseline layer_drop --drop $rule \
        --epochs "$epochs" --output_model "$output"
    half_depth+=("$output")
  done
done
$PY evaluate_fully_merged_layer.py "${EVAL[@]}" --block_heads $MERGE_HEADS --block_d_k $MERGE_DK --models "${half_depth[@]}"

$PY make_report.py --storage_directory "$STORAGE"
for pair in "merged_${MERGE_DK}_${MERGE_HEADS}_finetuned layer_drop_influence_finetuned" \
            "retrained_${DK}_${HEADS}_finetuned pruned_${DK}_${HEADS}_finetuned"; do
  $PY make_report.py --storage_directory "$STORAGE" --compare $pair || true
done
