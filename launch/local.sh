#!/usr/bin/env bash
# Run s2gr_jax on this machine: every local accelerator, or N simulated CPU devices.
#
#   launch/local.sh [--dry-run] [--cpu-devices N] [--data-dir DIR] -- <s2gr_jax.main flags>
#   launch/local.sh --cpu-devices 8 -- --config configs/default.py:tiny --workdir /tmp/w8
#
# --cpu-devices N  simulate N CPU devices (XLA_FLAGS), e.g. to try data parallelism
# --data-dir DIR   folder of dataset folders (sets S2GR_DATA_DIR)
# --dry-run        print the command instead of running it
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

dry_run=0
env_vars=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --cpu-devices)
      [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "--cpu-devices needs a positive integer" >&2; exit 2; }
      env_vars+=("JAX_PLATFORMS=cpu" "XLA_FLAGS=--xla_force_host_platform_device_count=$2"); shift 2 ;;
    --data-dir)
      [[ -d "${2:-}" ]] || { echo "--data-dir: no such folder: ${2:-}" >&2; exit 2; }
      env_vars+=("S2GR_DATA_DIR=$2"); shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option: $1 (put s2gr_jax.main flags after --)" >&2; usage >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "missing s2gr_jax.main flags after --" >&2; usage >&2; exit 2; }

python_bin="${PYTHON:-python3}"
cmd=(env "${env_vars[@]}" "$python_bin" -m s2gr_jax.main "$@")
if [[ $dry_run -eq 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
else
  exec "${cmd[@]}"
fi
