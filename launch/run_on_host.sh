#!/usr/bin/env bash
# Prepares this host and runs a command there: creates a virtualenv if missing, installs this
# repository into it (editable) when it is not installed yet or pyproject.toml / PIP_EXTRA changed,
# then execs the command from the repository root with the virtualenv first on PATH. Idempotent:
# the second call on a host goes straight to the command.
#
# Usage:
#   launch/run_on_host.sh COMMAND [ARGS...]
#   launch/run_on_host.sh python -m ganomaly_jax.main --config=configs/ganomaly.py:quick
#   PIP_EXTRA='jax[tpu]' launch/run_on_host.sh python -m ganomaly_jax.main --config=...   # TPU VM
#   launch/run_on_host.sh true                                    # only set up the environment
#
# Environment:
#   VENV       virtualenv directory (default: <repo>/.venv)
#   PYTHON     interpreter that creates it (default: python3; needs Python >= 3.11)
#   PIP_EXTRA  extra pip requirements, space-separated (e.g. 'jax[tpu]' or 'jax[cuda12]')
set -euo pipefail

if [[ $# -eq 0 ]]; then
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}" >&2
  exit 2
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
read -r -a extra <<< "${PIP_EXTRA:-}"

mkdir -p "$(dirname "$venv")"
# Several processes may start on one host at once (one per accelerator): install under a lock.
exec 9> "$venv.lock"
if command -v flock > /dev/null; then
  flock 9
fi
if [[ ! -x "$venv/bin/python" ]]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
stamp="$venv/.ganomaly_jax_installed"
want="$(cat "$repo/pyproject.toml" <(printf '%s\n' "${extra[@]}") | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$repo" "${extra[@]}"
  printf '%s\n' "$want" > "$stamp"
fi
exec 9>&-  # release the lock: the command itself must not hold it

cd "$repo"
export PATH="$venv/bin:$PATH"
exec "$@"
