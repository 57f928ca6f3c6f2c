#!/usr/bin/env bash
# Runs any config on N fake CPU devices, to debug sharding and multi-host code without accelerators.
# With PROCESSES=P it starts P processes of N/P devices each, talking over loopback exactly like the
# hosts of a pod (shared workdir; the coordinator on 127.0.0.1 given by JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES and JAX_PROCESS_ID, as on a cluster JAX cannot detect); their logs go to
# <workdir>/process_<i>.log.
#
# Usage:
#   launch/local_devices.sh N [ganomaly_jax.main flags...]
#   launch/local_devices.sh 8 --config=configs/ganomaly.py:quick --workdir=/tmp/q8
#   PROCESSES=2 launch/local_devices.sh 8 --config=configs/ganomaly.py:quick --workdir=/tmp/q2x4
#
# Environment: PROCESSES (default 1), PYTHON (default python), PORT (coordinator port, default: a
# free one), GANOMALY_INIT_TIMEOUT (seconds the processes wait for each other, default 300).
set -euo pipefail

usage() {
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}" >&2
  exit 2
}
[[ $# -ge 1 ]] || usage
devices="$1"
shift
processes="${PROCESSES:-1}"
python="${PYTHON:-python}"
if ! [[ "$devices" =~ ^[1-9][0-9]*$ && "$processes" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: N=$devices and PROCESSES=$processes must be positive integers" >&2
  usage
fi
if (( devices % processes != 0 )); then
  echo "error: N=$devices devices do not split over PROCESSES=$processes" >&2
  exit 2
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=$((devices / processes))${XLA_FLAGS:+ $XLA_FLAGS}"

if (( processes == 1 )); then
  exec "$python" -m ganomaly_jax.main "$@"
fi

workdir=""
for arg in "$@"; do
  if [[ "$arg" == --workdir=* ]]; then
    workdir="${arg#--workdir=}"
  fi
done
if [[ -z "$workdir" ]]; then
  echo "error: PROCESSES=$processes needs --workdir=DIR (shared by the processes, holds their logs)" >&2
  exit 2
fi
mkdir -p "$workdir"
port="${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"

pids=()
# shellcheck disable=SC2317  # only called by the EXIT trap
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2> /dev/null || true
  done
}
trap cleanup EXIT
for (( i = 0; i < processes; i++ )); do
  GANOMALY_DISTRIBUTED=1 JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$processes" \
    JAX_PROCESS_ID="$i" "$python" -m ganomaly_jax.main "$@" > "$workdir/process_$i.log" 2>&1 &
  pids+=("$!")
done
echo "started $processes processes (logs: $workdir/process_*.log)" >&2
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "error: process $i failed; last lines of $workdir/process_$i.log:" >&2
    tail -n 5 "$workdir/process_$i.log" >&2
    status=1
  fi
done
pids=()
exit "$status"
