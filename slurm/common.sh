# Shared by .train and .eval: turn a list of commands into one SLURM job array, and run one of its tasks.
# Settings (environment variables; defaults suit ETH's Euler with one GPU per task):
: "${SITRA_STORAGE:=${SCRATCH:-$PWD}/sitra}"      # --storage_directory of every task; logs go to $SITRA_STORAGE/slurm/
: "${SITRA_TEACHER:=bert-base-uncased}"           # --teacher
: "${SITRA_PYTHON:=python}"                        # the interpreter of the environment with sitra installed
: "${SITRA_GPUS:=1}"                               # GPUs per task (--gpus-per-task); 0 on CPU-only clusters
: "${SITRA_CPUS:=4}"                               # --cpus-per-task
: "${SITRA_MEM:=32G}"                              # --mem
: "${SITRA_TIME:=24:00:00}"                        # --time
: "${SITRA_PARTITION:=}"                           # --partition (empty: the cluster's default)
: "${SITRA_MAX_PARALLEL:=}"                        # at most this many tasks at once (array %N)
: "${SITRA_EXTRA:=}"                               # extra flags appended to every task's command
: "${SITRA_VARIANTS:=}"                            # ';'-separated flag sets, each a variant of the whole grid, e.g.
                                                   # "; --criterion L1; --criterion CrossEntropy --loss_on_logits"
                                                   # (each trains into its own run folders, utils/identity.py)
: "${SITRA_SIGNAL_SECONDS:=300}"                   # SIGUSR1 this long before the time limit: checkpoint and requeue

export SITRA_REPO=${SITRA_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}  # tasks run from here
export SITRA_STORAGE SITRA_TEACHER SITRA_PYTHON
# the variants as an array ("" when SITRA_VARIANTS is unset: the grid once, with default flags)
IFS=';' read -r -a SITRA_VARIANT_LIST <<< "${SITRA_VARIANTS:-}"
((${#SITRA_VARIANT_LIST[@]})) || SITRA_VARIANT_LIST=("")
EXIT_REQUEUE=75  # utils/distributed.py: the run checkpointed on a signal and wants to be resubmitted

# submit_array NAME DRY_RUN COMMAND...  (each COMMAND one string, one array task)
submit_array() {
  local name=$1 dry_run=$2
  shift 2
  local count=$#
  if ((count == 0)); then echo "nothing to submit for $name" >&2; return 1; fi
  local logs="$SITRA_STORAGE/slurm"
  local tasks="$logs/$name-$(date +%Y%m%d-%H%M%S)-$$.tasks"
  local array="0-$((count - 1))${SITRA_MAX_PARALLEL:+%$SITRA_MAX_PARALLEL}"
  local options=(--job-name "sitra-$name" --array "$array" --cpus-per-task "$SITRA_CPUS" --mem "$SITRA_MEM"
                 --time "$SITRA_TIME" --output "$logs/%x-%A_%a.log" --requeue --open-mode append
                 --signal "B:USR1@$SITRA_SIGNAL_SECONDS")
  ((SITRA_GPUS > 0)) && options+=(--gpus-per-task "$SITRA_GPUS")
  [[ -n ${SITRA_AFTER:-} ]] && options+=(--dependency "afterok:$SITRA_AFTER")  # start when that job succeeded
  [[ -n $SITRA_PARTITION ]] && options+=(--partition "$SITRA_PARTITION")
  if [[ $dry_run == 1 ]]; then
    echo "would submit $count tasks: sbatch ${options[*]} $SITRA_REPO/slurm/task.sh $tasks"
    local i=0
    for command in "$@"; do echo "  task $i: $command"; i=$((i + 1)); done
    return 0
  fi
  mkdir -p "$logs"
  printf '%s\n' "$@" > "$tasks"
  sbatch --parsable "${options[@]}" "$SITRA_REPO/slurm/task.sh" "$tasks"
}
