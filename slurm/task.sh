#!/usr/bin/env bash
# One task of a sitra job array: runs line SLURM_ARRAY_TASK_ID of the task file given as $1.
# On SIGUSR1/SIGTERM (SLURM's warning before the time limit or preemption) the training script
# checkpoints its position and exits 75; the task then requeues itself and resumes from that step.
# A child killed by one of these signals before it could handle them (138, 143) is requeued too:
# every write is atomic, so the rerun starts from the last complete checkpoint.
set -uo pipefail
# Trapped first: a signal before the command starts means it is not started (the task is requeued); one after is
# passed on to it. (Sent in the instant of the fork, a signal could reach the child before it drops these traps.)
child="" pending=""
forward() { pending=$1; [[ -n $child ]] && kill -"$1" "$child" 2>/dev/null; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
source "$SITRA_REPO/slurm/common.sh"  # SITRA_REPO comes with the submitting environment
cd "$SITRA_REPO"
command=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$1")
echo "[$(date '+%F %T')] task $SLURM_ARRAY_TASK_ID of job ${SLURM_ARRAY_JOB_ID:-?} on $(hostname): $command"
status=$EXIT_REQUEUE
if [[ -n $pending ]]; then
  echo "[$(date '+%F %T')] SIG$pending before the command started: not started"
else
  bash -c "exec $command" &
  child=$!
  [[ -n $pending ]] && kill -"$pending" "$child" 2>/dev/null
  wait $child; status=$?
  while kill -0 $child 2>/dev/null; do wait $child; status=$?; done  # wait again after a trapped signal
fi
if ((status == EXIT_REQUEUE || status == 128 + 10 || status == 128 + 15)); then
  echo "[$(date '+%F %T')] stopped by a signal (checkpoint kept): requeueing"
  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
  status=$EXIT_REQUEUE
fi
echo "[$(date '+%F %T')] exit $status"
exit $status
