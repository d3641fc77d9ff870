#!/usr/bin/env bash
# Train s2gr_jax on one machine with several GPUs: a single process sees all the chosen
# GPUs and JAX shards the batch over them (data parallel over the mesh).
#
#   launch/multi_gpu.sh [--dry-run] [--gpus LIST] [--mem-fraction F] [--data-dir DIR]
#                       [--python PYTHON] -- <s2gr_jax.main flags>
#   launch/multi_gpu.sh --gpus 0,1,2,3 -- --config configs/s2gr_beauty.py --workdir runs/b4
#
# --gpus LIST         GPUs to use, e.g. 0,1,2,3 (sets CUDA_VISIBLE_DEVICES; default: all)
# --mem-fraction F    share of each GPU's memory JAX preallocates, e.g. 0.9
#                     (sets XLA_PYTHON_CLIENT_MEM_FRACTION; JAX's default is 0.75)
# --data-dir DIR      folder of dataset folders (sets S2GR_DATA_DIR)
# --python PYTHON     interpreter with s2gr_jax installed (default python3)
# --dry-run           print the command with its environment instead of running it
set -euo pipefail

prog="launch/multi_gpu.sh"
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "$prog: $*" >&2; echo "(see $prog --help)" >&2; exit 2; }
# Print a command on one line, quoted so that it can be pasted into bash.
show() {
  local out="" a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+="$a "; else out+="'${a//\'/\'\\\'\'}' "; fi
  done
  printf '%s\n' "${out% }"
}
value() {
  [[ $# -ge 2 && -n "$2" && "$2" != -* ]] || die "$1 needs a value"
  printf '%s' "$2"
}

dry_run=0
python_bin="python3"
env_vars=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == --?*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --gpus)
      gpus=$(value "$@")
      [[ "$gpus" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus needs a list of GPU ids like 0,1,2,3, got: $gpus"
      env_vars+=("CUDA_VISIBLE_DEVICES=$gpus"); shift 2 ;;
    --mem-fraction)
      frac=$(value "$@")
      [[ "$frac" =~ ^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$ ]] ||
        die "--mem-fraction needs a number in (0, 1], got: $frac"
      env_vars+=("XLA_PYTHON_CLIENT_MEM_FRACTION=$frac"); shift 2 ;;
    --data-dir)
      data_dir=$(value "$@")
      [[ -d "$data_dir" ]] || die "--data-dir: no such folder: $data_dir"
      env_vars+=("S2GR_DATA_DIR=$data_dir"); shift 2 ;;
    --python) python_bin=$(value "$@"); shift 2 ;;
    --) shift; break ;;
    *) die "unknown option: $1 (put s2gr_jax.main flags after --)" ;;
  esac
done
[[ $# -gt 0 ]] || die "missing s2gr_jax.main flags after --"
for a in "$@"; do
  [[ "$a" != --multiprocess && "$a" != -multiprocess ]] ||
    die "--multiprocess is for several hosts; here one process drives every GPU"
done

cmd=(env "${env_vars[@]}" "$python_bin" -m s2gr_jax.main "$@")
if [[ $dry_run -eq 1 ]]; then
  show "${cmd[@]}"
else
  exec "${cmd[@]}"
fi
