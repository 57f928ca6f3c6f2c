#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice (one host or a pod): creates the TPU VM unless it exists (a
# preempted spot VM is recreated), copies this repository to every worker, and runs the same
# `ganomaly_jax.main` command on all workers with GANOMALY_DISTRIBUTED=1, where
# jax.distributed.initialize(), called with no arguments, finds the pod's workers, their count and
# each worker's index by itself (TPU VM metadata): no coordinator settings. The workdir is a gs://
# bucket path, passed as is: checkpoints (orbax), JSON files, curves and pictures (etils.epath) and
# TensorBoard events (tf.io.gfile) go straight to the bucket with the VM's service account, no
# gcsfuse. Checkpoints outlive the VM, and running the same command again resumes a preempted run.
#
# With --benchmark first, every worker instead runs its own share of a benchmark suite
# (`ganomaly_jax.experiments.benchmark --share=I/N`, I = the worker's index, N = the workers): no
# jax.distributed and no collective between workers, each worker's libtpu set up as a slice of its
# own (TPU_* variables below), all writing into one gs:// workdir; the worker that finishes the
# suite's last run writes the tables, and running the command again resumes the suite.
#
# Usage:
#   launch/tpu_pod.sh gs://BUCKET/PATH [ganomaly_jax.main flags...]
#   TPU_NAME=ganomaly ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 launch/tpu_pod.sh \
#     gs://my-bucket/runs/masked --config=configs/masked.py:cars256 --config.dataset.name=folder:/data/cars
#   launch/tpu_pod.sh --benchmark gs://BUCKET/PATH --suite=digits [--parallel=4] [benchmark flags...]
#
# Environment:
#   TPU_NAME          TPU VM name (default: ganomaly)
#   ZONE              zone (default: us-central2-b)
#   ACCELERATOR_TYPE  slice type, e.g. v4-8, v4-32, v5litepod-16 (default: v4-8)
#   RUNTIME_VERSION   TPU VM image (default: tpu-ubuntu2204-base)
#   PROJECT           Google Cloud project (default: gcloud's configured one)
#   SPOT=1            create a spot (preemptible) VM
#   PIP_EXTRA         extra pip requirements on the workers (default: 'jax[tpu]')
#   DRY_RUN=1         print the gcloud commands instead of running them
#   HOST_CHIPS        --benchmark: the chips of one worker as x,y,z (default 2,2,1: 4 chips, v4 and
#                     v5p hosts); each worker's libtpu is told it is a one-host slice of that shape.
#                     Not yet tried on a pod: no TPU was available when this mode was written.
#   WORKER_ID, WORKER_COUNT  --benchmark: the worker's index and the worker count (default: read
#                     from the TPU VM's metadata, as jax.distributed would)
#
# On each worker the script runs itself as `launch/tpu_pod.sh --on-worker gs://... [flags...]`:
# launch/run_on_host.sh (virtualenv + install, once) execs the command.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}" >&2
  exit 2
}

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

split_url() {  # gs://bucket/some/path -> sets bucket and path
  local url="$1"
  if [[ "$url" != gs://?* ]]; then
    echo "error: the workdir must be a gs:// path (gs://BUCKET/PATH), got '$url'" >&2
    exit 2
  fi
  url="${url#gs://}"
  bucket="${url%%/*}"
  path="${url#"$bucket"}"
  path="${path#/}"
}

metadata() {  # an attribute of this TPU VM (where jax.distributed's own detection reads it)
  curl -sf -H 'Metadata-Flavor: Google' \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}

on_worker() {
  local workdir="$1"
  split_url "$workdir"
  shift
  # The code writes gs:// itself (etils.epath, orbax, tf.io.gfile): no mount, no gcsfuse.
  if [[ "$benchmark" == 1 ]]; then
    local worker="${WORKER_ID:-}" count="${WORKER_COUNT:-}"
    if [[ "${DRY_RUN:-0}" == 1 ]]; then  # no metadata server to ask: show where they go
      worker="${worker:-WORKER}"
      count="${count:-WORKERS}"
    fi
    if [[ -z "$worker" ]]; then
      worker="$(metadata agent-worker-number)"
    fi
    if [[ -z "$count" ]]; then
      count="$(metadata worker-network-endpoints | tr ',' '\n' | grep -c .)"
    fi
    # This worker's chips as a slice of their own: libtpu skips the pod's metadata and forms no
    # slice with the other workers, so every run stays on this host.
    run env PIP_EXTRA="${PIP_EXTRA:-jax[tpu]}" TPU_SKIP_MDS_QUERY=1 TPU_HOST_BOUNDS=1,1,1 \
      TPU_CHIPS_PER_HOST_BOUNDS="${HOST_CHIPS:-2,2,1}" TPU_WORKER_ID=0 \
      TPU_WORKER_HOSTNAMES=localhost \
      "$repo/launch/run_on_host.sh" python -m ganomaly_jax.experiments.benchmark \
      --workdir="$workdir" --share="$worker/$count" "$@"
  else
    run env GANOMALY_DISTRIBUTED=1 PIP_EXTRA="${PIP_EXTRA:-jax[tpu]}" \
      "$repo/launch/run_on_host.sh" python -m ganomaly_jax.main --workdir="$workdir" "$@"
  fi
}

benchmark=0
if [[ $# -ge 1 && "$1" == --on-worker ]]; then
  shift
  if [[ $# -ge 1 && "$1" == --benchmark ]]; then
    benchmark=1
    shift
  fi
  [[ $# -ge 1 ]] || usage
  on_worker "$@"
  exit
fi
if [[ $# -ge 1 && "$1" == --benchmark ]]; then
  benchmark=1
  shift
fi
[[ $# -ge 1 && "$1" != -* ]] || usage
workdir_url="$1"
shift
split_url "$workdir_url"

name="${TPU_NAME:-ganomaly}"
where=(--zone="${ZONE:-us-central2-b}")
if [[ -n "${PROJECT:-}" ]]; then
  where+=(--project="$PROJECT")
fi

# 1. The TPU VM: reuse a READY one, recreate a preempted one, create a missing one.
state=""
if [[ "${DRY_RUN:-0}" != 1 ]]; then
  state="$(gcloud compute tpus tpu-vm describe "$name" "${where[@]}" --format='value(state)' 2> /dev/null || true)"
fi
case "$state" in
  READY) echo "reusing TPU VM $name" >&2 ;;
  PREEMPTED | TERMINATED)
    echo "TPU VM $name is $state: recreating it (the workdir in gs://$bucket is kept)" >&2
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
    state=""
    ;;
  "") ;;
  *)
    echo "error: TPU VM $name is $state; wait until it is READY (or delete it) and retry" >&2
    exit 1
    ;;
esac
if [[ -z "$state" ]]; then
  create=(gcloud compute tpus tpu-vm create "$name" "${where[@]}"
          --accelerator-type="${ACCELERATOR_TYPE:-v4-8}" --version="${RUNTIME_VERSION:-tpu-ubuntu2204-base}")
  if [[ "${SPOT:-0}" == 1 ]]; then
    create+=(--spot)
  fi
  run "${create[@]}"
fi

# 2. The code, to every worker: the files git knows (tracked or not ignored), not venvs or runs.
archive="$(mktemp -d)/ganomaly_jax.tgz"
trap 'rm -rf "$(dirname "$archive")"' EXIT
if git -C "$repo" rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  git -C "$repo" ls-files -z --cached --others --exclude-standard \
    | tar -C "$repo" --null --ignore-failed-read -T - -czf "$archive"
else
  tar -C "$repo" --exclude=.venv --exclude=runs --exclude=.git -czf "$archive" .
fi
run gcloud compute tpus tpu-vm scp "$archive" "$name:ganomaly_jax.tgz" --worker=all "${where[@]}"

# 3. The same command on every worker, at the same time (training: the processes wait for each
# other; --benchmark: each takes its share of the suite).
# (ssh starts in the home directory, where scp put the archive.)
mode=()
if [[ "$benchmark" == 1 ]]; then
  mode=(--benchmark)
fi
remote="mkdir -p ganomaly_jax && tar -xzf ganomaly_jax.tgz -C ganomaly_jax && bash ganomaly_jax/launch/tpu_pod.sh --on-worker $(printf '%q ' "${mode[@]}" "$workdir_url" "$@")"
run gcloud compute tpus tpu-vm ssh "$name" --worker=all "${where[@]}" --command="$remote"
