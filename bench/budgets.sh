#!/usr/bin/env bash
# Smoke scale: one model per method at 50%, 33% and 25% of the teacher's encoder FLOPs per token, each healed,
# evaluated on the same test masks, then make_report.py's budget tables. sitra's merged pairs (at 33% and 25%
# with narrower feed-forwards, --merge_ffn_width) against the field's layer drop and layer drop + neuron pruning
# with least-squares reconstruction (compound models), on the offline teacher.
# Usage: bash bench/budgets.sh [STORAGE]   (needs the venv of `make setup` and SITRA_DATA_DIR)
# Settings: TEACHER (default STORAGE/teacher, trained if missing), SENTENCES (2000 training sentences per run),
# HEAL_EPOCHS (1), PERCENT (share of the test split evaluated, 0.2), CHECK_SENTENCES (300). Every run resumes or
# skips when finished.
set -euo pipefail
cd "$(dirname "$0")/.."
STORAGE=${1:-storage/budgets}
PY=${PY:-.venv/bin/python}
TEACHER=${TEACHER:-$STORAGE/teacher}
SENTENCES=${SENTENCES:-2000} HEAL_EPOCHS=${HEAL_EPOCHS:-1} PERCENT=${PERCENT:-0.2} CHECK_SENTENCES=${CHECK_SENTENCES:-300}
# every run checks itself on CHECK_SENTENCES validation sentences before and after training (a diagnostic)
COMMON=(--teacher "$TEACHER" --storage_directory "$STORAGE" --max_sentences "$SENTENCES" --eval_sentences "$CHECK_SENTENCES")
EVAL=(--teacher "$TEACHER" --storage_directory "$STORAGE" --percentage_data "$PERCENT" --reference none --latency_repeats 0)
MERGE=(--block_heads 12 --block_d_k 32 --merge_init first)
[ -f "$TEACHER/config.json" ] || $PY train_teacher.py --init minilm --max_steps 500 --output_dir "$TEACHER" --storage_directory "$STORAGE"
FFN=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['intermediate_size'])" "$TEACHER/config.json")
models=()

# sitra: merged pairs (the teacher's width: 50%; half and a quarter of it: about 33% and 25%), healed
for width in "$FFN" $((FFN / 2)) $((FFN / 4)); do
  narrow=$([[ $width == "$FFN" ]] || echo "--merge_ffn_width $width")
  suffix=$([[ $width == "$FFN" ]] || echo "_ffn$width")
  # shellcheck disable=SC2086
  $PY retrain_merge.py "${COMMON[@]}" --block all "${MERGE[@]}" $narrow --epochs 1
  for epochs in 0 "$HEAL_EPOCHS"; do  # the healed run continues the training-free one
    output=$STORAGE/models/merged$suffix$([[ $epochs == 0 ]] || echo _finetuned)
    # shellcheck disable=SC2086
    $PY finetune_fully_merged.py "${COMMON[@]}" "${MERGE[@]}" $narrow --epochs "$epochs" --output_model "$output"
  done
  models+=("merged$suffix" "merged${suffix}_finetuned")
done

# the field: the top half of the layers dropped (50%), and with the kept layers' feed-forwards pruned by importance
# and reconstructed by least squares (about 33% and 25%)
$PY drop_layers.py "${COMMON[@]}" --drop top --epochs 0 --output_model "$STORAGE/models/layer_drop_top"
$PY drop_layers.py "${COMMON[@]}" --drop top --epochs "$HEAL_EPOCHS" --output_model "$STORAGE/models/layer_drop_top_finetuned"
models+=(layer_drop_top layer_drop_top_finetuned)
for width in $((FFN / 2)) $((FFN / 4)); do
  name=drop_top_ffn${width}_ls
  $PY build_compound.py --teacher "$TEACHER" --storage_directory "$STORAGE" --max_sentences "$SENTENCES" --name "$name" \
      --recipe "{\"drop\": {\"rule\": \"top\", \"count\": 3}, \"prune_neurons\": {\"width\": $width, \"reconstruct\": true, \"layers\": [0, 1, 2]}}"
  $PY train_full_merged_model.py "${COMMON[@]}" --model "$STORAGE/models/$name" --epochs "$HEAL_EPOCHS" --train_ffn
  models+=("$name" "${name}_finetuned-ffn")
done

$PY eval_retrained_12.py "${EVAL[@]}" --evaluation budgets --models "${models[@]/#/$STORAGE/models/}"
$PY make_report.py --storage_directory "$STORAGE"
for budget in "merged_finetuned layer_drop_top_finetuned" \
              "merged_ffn$((FFN / 2))_finetuned drop_top_ffn$((FFN / 2))_ls_finetuned-ffn" \
              "merged_ffn$((FFN / 4))_finetuned drop_top_ffn$((FFN / 4))_ls_finetuned-ffn"; do
  $PY make_report.py --storage_directory "$STORAGE" --compare $budget || true
done
