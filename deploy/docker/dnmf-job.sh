#!/bin/sh
# dnmf-job ARGS...: run `dnmf fit ARGS... --scheduler $DASK_SCHEDULER_ADDRESS` as a batch job.
#
# 1. has dnmf fit wait (--wait-for-workers) until DNMF_WAIT_WORKERS workers (default 1) are
#    connected to the scheduler, so the chunk plan is made for the cluster the fit will run on
#    (up to DNMF_WAIT_TIMEOUT seconds, default 1800: --wait-timeout);
# 2. adds --resume when OUT (-o/--out) holds a checkpoint, so a restarted job (a pod that was
#    evicted, a container that was killed) continues from its last checkpoint;
# 3. execs dnmf fit: its exit code is the job's (0 done, 1 bad input or failed run, 130
#    interrupted with the checkpoint kept).
#
# The Dask operator sets DASK_SCHEDULER_ADDRESS in a DaskJob's pod; docker-compose.yml sets it.
set -eu

: "${DASK_SCHEDULER_ADDRESS:?set DASK_SCHEDULER_ADDRESS, e.g. tcp://scheduler:8786}"
PYTHON="${DNMF_PYTHON:-python}"

out=""
previous=""
for arg in "$@"; do
    case "$previous" in -o|--out) out="$arg" ;; esac
    case "$arg" in --out=*) out="${arg#--out=}" ;; esac
    previous="$arg"
done

WAIT_WORKERS="${DNMF_WAIT_WORKERS:-1}"
WAIT_TIMEOUT="${DNMF_WAIT_TIMEOUT:-1800}"
echo "dnmf-job: dnmf fit waits for $WAIT_WORKERS worker(s) at $DASK_SCHEDULER_ADDRESS" \
    "(up to $WAIT_TIMEOUT s)"

resume=""
if [ -n "$out" ] && "$PYTHON" - "$out" <<'PY'
import sys

import zarr

try:
    found = "checkpoint" in zarr.open_group(sys.argv[1], mode="r")
except Exception:  # no store yet (or not a dnmf store): start afresh
    found = False
sys.exit(0 if found else 1)
PY
then
    resume="--resume"
    echo "dnmf-job: $out holds a checkpoint; continuing with --resume"
fi

# shellcheck disable=SC2086 # $resume is empty or one word
exec dnmf fit "$@" --scheduler "$DASK_SCHEDULER_ADDRESS" --wait-for-workers "$WAIT_WORKERS" \
    --wait-timeout "$WAIT_TIMEOUT" $resume
