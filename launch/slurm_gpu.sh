#!/usr/bin/env bash
# Train s2gr_jax on several GPU nodes with SLURM: one task (one JAX process) per node,
# each seeing all of its node's GPUs.
#
#   launch/slurm_gpu.sh [options] -- <s2gr_jax.main flags>
#
# Writes a batch script (to stdout, or --write FILE) and with --submit hands it to sbatch.
# The script exports JAX_COORDINATOR_ADDRESS (first node of the job, --port),
# JAX_NUM_PROCESSES=$SLURM_NNODES, JAX_LOCAL_DEVICE_IDS=0..G-1 and, per task,
# JAX_PROCESS_ID=$SLURM_PROCID, then runs
# srun ... python -m s2gr_jax.main --multiprocess <flags> in this repository.
#
# --nodes N            nodes (default 2)
# --gpus-per-node G    GPUs per node (default 8)
# --partition P        SLURM partition
# --time HH:MM:SS      time limit ([D-]HH:MM:SS)
# --account A          SLURM account
# --job-name NAME      job name (default s2gr_jax)
# --sbatch-opt OPT     extra "#SBATCH OPT" line, e.g. --sbatch-opt=--exclusive (repeatable)
# --port PORT          coordinator port on the first node (default 12345)
# --venv DIR           virtual environment with s2gr_jax on the nodes (default ~/s2gr_venv)
# --repo-dir DIR       repository the job runs in (default: this one)
# --data-dir DIR       folder of dataset folders on the nodes (S2GR_DATA_DIR)
# --env KEY=VALUE      extra environment variable for the job (repeatable)
# --write FILE         write the batch script to FILE instead of stdout
# --submit             submit it with sbatch (FILE if --write, else on stdin)
# --dry-run            print the batch script and the sbatch command; write/submit nothing
#
# Examples:
#   launch/slurm_gpu.sh --nodes 4 --partition gpu --time 12:00:00 --submit -- \
#     --config configs/s2gr_beauty.py --workdir /shared/runs/beauty
#   launch/slurm_gpu.sh --dry-run -- --config configs/default.py:tiny --workdir /tmp/w
set -euo pipefail

prog="launch/slurm_gpu.sh"
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "$prog: $*" >&2; echo "(see $prog --help)" >&2; exit 2; }
value() {
  local opt="$1" allow_dash="$2"; shift 2
  [[ $# -ge 1 && -n "$1" ]] || die "$opt needs a value"
  [[ "$allow_dash" == 1 || "$1" != -* ]] || die "$opt needs a value (got option $1)"
  printf '%s' "$1"
}
positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer, got: $2"; }
# A path for the batch script: quoted, but a leading ~/ still means the job's $HOME.
path_q() {
  if [[ "$1" == \~ ]]; then printf '%s' "\"\$HOME\""
  elif [[ "$1" == \~/* ]]; then printf '%s/%q' "\"\$HOME\"" "${1#\~/}"
  else printf '%q' "$1"; fi
}

nodes=2 gpus=8 partition="" time_limit="" account="" job_name="s2gr_jax" port=12345
venv=\~/s2gr_venv repo_dir="" data_dir="" write="" submit=0 dry_run=0
env_vars=() sbatch_opts=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == --?*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift; continue ;;
    --submit) submit=1; shift; continue ;;
    --) shift; break ;;
  esac
  [[ "$1" == -* ]] || die "unexpected argument: $1 (put s2gr_jax.main flags after --)"
  opt="$1"; shift
  case "$opt" in
    --nodes) nodes=$(value "$opt" 0 "$@"); positive "$opt" "$nodes" ;;
    --gpus-per-node) gpus=$(value "$opt" 0 "$@"); positive "$opt" "$gpus" ;;
    --partition) partition=$(value "$opt" 0 "$@") ;;
    --time)
      time_limit=$(value "$opt" 0 "$@")
      [[ "$time_limit" =~ ^([0-9]+-)?[0-9]+:[0-5][0-9]:[0-5][0-9]$ ]] ||
        die "--time needs HH:MM:SS (or D-HH:MM:SS), got: $time_limit" ;;
    --account) account=$(value "$opt" 0 "$@") ;;
    --job-name) job_name=$(value "$opt" 0 "$@") ;;
    --sbatch-opt) sbatch_opts+=("$(value "$opt" 1 "$@")") ;;
    --port)
      port=$(value "$opt" 0 "$@")
      [[ "$port" =~ ^[1-9][0-9]{0,4}$ && "$port" -le 65535 ]] || die "--port needs a port number, got: $port" ;;
    --venv) venv=$(value "$opt" 0 "$@") ;;
    --repo-dir) repo_dir=$(value "$opt" 0 "$@") ;;
    --data-dir) data_dir=$(value "$opt" 0 "$@") ;;
    --env)
      kv=$(value "$opt" 0 "$@")
      [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs KEY=VALUE, got: $kv"
      env_vars+=("$kv") ;;
    --write) write=$(value "$opt" 0 "$@") ;;
    *) die "unknown option: $opt (put s2gr_jax.main flags after --)" ;;
  esac
  shift
done
[[ $# -gt 0 ]] || die "missing s2gr_jax.main flags after --"
for a in "$@"; do
  [[ "$a" != --multiprocess && "$a" != -multiprocess ]] || die "do not pass --multiprocess: it is always added"
done
[[ -n "$repo_dir" ]] || repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The batch script.
device_ids=$(seq -s, 0 $((gpus - 1)))
lines=(
  "#!/bin/bash"
  "# s2gr_jax on $nodes node(s) x $gpus GPU(s), one JAX process per node. Made by $prog."
  "#SBATCH --job-name=$job_name"
  "#SBATCH --nodes=$nodes"
  "#SBATCH --ntasks-per-node=1"
  "#SBATCH --gpus-per-node=$gpus"
)
[[ -z "$partition" ]] || lines+=("#SBATCH --partition=$partition")
[[ -z "$time_limit" ]] || lines+=("#SBATCH --time=$time_limit")
[[ -z "$account" ]] || lines+=("#SBATCH --account=$account")
for o in "${sbatch_opts[@]}"; do lines+=("#SBATCH $o"); done
lines+=(
  "set -euo pipefail"
  "cd $(path_q "$repo_dir")"
  "# sed reads the whole list: 'head -n1' could close the pipe early, and under pipefail"
  "# scontrol's SIGPIPE (status 141) would abort the job."
  "head_node=\$(scontrol show hostnames \"\$SLURM_JOB_NODELIST\" | sed -n 1p)"
  "export JAX_COORDINATOR_ADDRESS=\"\$head_node:$port\""
  "export JAX_NUM_PROCESSES=\"\$SLURM_NNODES\""
  "# One process per node sees all its GPUs (JAX would otherwise pick GPU \$SLURM_LOCALID only)."
  "export JAX_LOCAL_DEVICE_IDS=$device_ids"
)
[[ -z "$data_dir" ]] || lines+=("export S2GR_DATA_DIR=$(path_q "$data_dir")")
for kv in "${env_vars[@]}"; do lines+=("export ${kv%%=*}=$(printf %q "${kv#*=}")"); done
cmd="$(path_q "${venv%/}/bin/python") -m s2gr_jax.main --multiprocess"
for a in "$@"; do cmd+=" $(printf %q "$a")"; done
lines+=(
  "echo \"coordinator \$JAX_COORDINATOR_ADDRESS, \$JAX_NUM_PROCESSES process(es)\""
  "# Each task exports its own rank; \$SLURM_PROCID is expanded by the task's shell."
  "# shellcheck disable=SC2016"
  "srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c 'export JAX_PROCESS_ID=\$SLURM_PROCID; exec \"\$@\"' bash \\"
  "  $cmd"
)
script=$(printf '%s\n' "${lines[@]}")

if [[ -n "$write" ]]; then sbatch_cmd="sbatch $(printf %q "$write")"
else sbatch_cmd="sbatch  # the batch script on stdin"; fi

if [[ $dry_run -eq 1 ]]; then
  echo "# ---- batch script${write:+ (would be written to $write)} ----"
  printf '%s\n' "$script"
  echo "# ---- end of batch script ----"
  echo "$sbatch_cmd"
  exit 0
fi
if [[ -n "$write" ]]; then
  printf '%s\n' "$script" > "$write"
  if [[ $submit -eq 1 ]]; then
    sbatch "$write"
  else
    echo "$prog: wrote $write; submit it with: sbatch $(printf %q "$write")" >&2
  fi
elif [[ $submit -eq 1 ]]; then
  printf '%s\n' "$script" | sbatch
else
  printf '%s\n' "$script"
fi
