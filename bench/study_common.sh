# shellcheck shell=bash
# Shared by the study scripts (sourced): stage timing and one evaluation of several models on the same masks.
# Needs PY, TEACHER, PERCENT and TIMES set by the sourcing script.

stage() {  # stage NAME COMMAND...: run it and append "NAME, seconds, part, finished at" to $TIMES
  # (the part, STAGE_PART, because parts run side by side append to one file)
  local name=$1 started=$SECONDS
  shift
  echo "== $name ($(date +%H:%M:%S))"
  "$@"
  printf '%s\t%d\t%s\t%s\n' "$name" $((SECONDS - started)) "${STAGE_PART:-}" "$(date -Iseconds)" >> "$TIMES"
}

evaluate() {  # evaluate STORAGE NAME MODEL...: the models of STORAGE/models on the same test masks, one pass
  local storage=$1 name=$2
  shift 2
  "$PY" eval_retrained_12.py --teacher "$TEACHER" --storage_directory "$storage" --percentage_data "$PERCENT" \
      --reference none --latency_repeats 0 --evaluation "$name" --models "${@/#/$storage/models/}"
}
