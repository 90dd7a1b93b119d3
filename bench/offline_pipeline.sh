#!/usr/bin/env bash
# The whole pipeline on the offline 6-layer teacher (CPU-sized): the commands behind the README's results.
# Usage: bash bench/offline_pipeline.sh [STORAGE]   (needs the venv of `make setup` and SITRA_DATA_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
STORAGE=${1:-storage/offline}
PY=${PY:-.venv/bin/python}
TEACHER=$STORAGE/teacher
SENTENCES=${SENTENCES:-8000}        # training sentences per run (the full train split has 75,720)
HEADS=6 DK=32                       # retrained attentions: half the teacher's 12 x 32
MERGE_HEADS=12 MERGE_DK=32          # merged layers: the teacher's attention shape
MERGE=(--block_heads $MERGE_HEADS --block_d_k $MERGE_DK --merge_init first)  # names the merge runs and what reads them
COMMON=(--teacher "$TEACHER" --storage_directory "$STORAGE" --max_sentences "$SENTENCES")
EVAL=(--teacher "$TEACHER" --storage_directory "$STORAGE" --percentage_data 0.1 --reference none)
LAYERS=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['num_hidden_layers'])" "$TEACHER/config.json" 2>/dev/null || echo 6)

[ -f "$TEACHER/config.json" ] || $PY train_teacher.py --init minilm --max_steps 500 --storage_directory "$STORAGE"

# 1. retrain every attention block, assemble them (notebook), evaluate, train one block till the end, finetune
for ((block = 0; block < LAYERS; block++)); do
  $PY retrain_single_block.py "${COMMON[@]}" --block $block --block_heads $HEADS --block_d_k $DK --epochs 2
done
$PY bench/assemble.py --storage_directory "$STORAGE" --teacher "$TEACHER" --block_heads $HEADS --block_d_k $DK --executed "$STORAGE/build_bert_from_retrained_12.executed.ipynb"
$PY eval_retrained_12.py "${EVAL[@]}" --block_heads $HEADS --block_d_k $DK
$PY train_block_till_end.py "${COMMON[@]}" --block 2 --block_heads $HEADS --block_d_k $DK --epochs 1
$PY train_full_merged_model.py "${COMMON[@]}" --block_heads $HEADS --block_d_k $DK --epochs 1 \
    --export_hf "$STORAGE/exported/retrained_${DK}_${HEADS}_finetuned"
$PY eval_retrained_12.py "${EVAL[@]}" --model "$STORAGE/models/retrained_${DK}_${HEADS}_finetuned"

# 2. merge every pair, train the chain conditionally, finetune the fully merged models and the layer-drop baseline
for ((block = 0; block + 1 < LAYERS; block += 2)); do
  $PY retrain_merge.py "${COMMON[@]}" --block $block "${MERGE[@]}" --epochs 2 --cache_teacher
  $PY eval_merge_layer.py "${EVAL[@]}" --block $block "${MERGE[@]}" --latency_repeats 5
done
$PY finetune_conditioned_fully_merged.py "${COMMON[@]}" --all "${MERGE[@]}" --epochs 1
$PY finetune_fully_merged.py "${COMMON[@]}" "${MERGE[@]}" --epochs 1 \
    --export_hf "$STORAGE/exported/merged_${MERGE_DK}_${MERGE_HEADS}"
for variant in "--source conditioned" "--baseline layer_drop"; do
  $PY finetune_fully_merged.py "${COMMON[@]}" "${MERGE[@]}" --epochs 1 $variant
done
$PY evaluate_fully_merged_layer.py "${EVAL[@]}" "${MERGE[@]}"

# 3. the exported models in plain transformers, beside the teacher
$PY bench/fill_mask.py --models "$TEACHER" "$STORAGE/exported/retrained_${DK}_${HEADS}_finetuned" \
    "$STORAGE/exported/merged_${MERGE_DK}_${MERGE_HEADS}" --sentence "${SENTENCE:-the river flows into the [MASK] near the city .}"
