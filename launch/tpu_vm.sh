#!/usr/bin/env bash
# Train s2gr_jax on a Cloud TPU VM (one host or a multi-host pod slice) with gcloud.
#
#   launch/tpu_vm.sh --tpu NAME --zone ZONE [options] -- <s2gr_jax.main flags>
#
# Steps: (--create: describe, else create the TPU VM) -> on every worker
# (gcloud compute tpus tpu-vm ssh NAME --worker=all): clone/update the repo into
# ~/s2gr_jax, install jax[tpu] and the project into ~/s2gr_venv -> on every worker:
# cd ~/s2gr_jax && ~/s2gr_venv/bin/python -m s2gr_jax.main --multiprocess <flags>
# -> (--copy-results) scp the workdir back from worker 0.
#
# --tpu NAME               TPU VM name (required)
# --zone ZONE              its zone, e.g. us-west4-a (required)
# --project P              Google Cloud project (default: gcloud's configured one)
# --create                 create the TPU VM if it does not exist yet
# --accelerator-type TYPE  used with --create (default v5litepod-8)
# --version RUNTIME        used with --create (default v2-alpha-tpuv5-lite)
# --repo URL_OR_PATH       git URL (or path on the VM) cloned on every worker; an existing
#                          local folder is uploaded instead (no .git/.venv/runs)
#                          (default: this repository's git remote "origin")
# --branch B               branch or tag to clone/check out (git URLs only)
# --data-dir DIR           dataset folder on the workers (S2GR_DATA_DIR), a local path
# --env KEY=VALUE          extra environment variable for the run (repeatable)
# --gcloud-flag FLAG       extra flag for every ssh/scp call, e.g. --tunnel-through-iap
# --copy-results DIR       afterwards copy the workdir from worker 0 into local DIR
#                          (skipped with a note when the workdir is gs://)
# --dry-run                print every command, one per line, instead of running it
#
# Examples:
#   launch/tpu_vm.sh --tpu s2gr --zone us-west4-a --create --data-dir /mnt/data -- \
#     --config configs/s2gr_beauty.py --workdir /mnt/runs/beauty   # a shared (FUSE) mount
#   launch/tpu_vm.sh --tpu s2gr --zone us-west4-a --copy-results ./runs --dry-run -- \
#     --config configs/default.py:tiny --workdir runs/tiny --config.seed=1
set -euo pipefail

prog="launch/tpu_vm.sh"
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
# Quote for the remote shell, leaving a leading ~/ to mean the remote $HOME.
remote_q() {
  if [[ "$1" == \~/* ]]; then printf '%s/%q' \~ "${1#\~/}"; else printf '%q' "$1"; fi
}
run() { if [[ $dry_run -eq 1 ]]; then show "$@"; else "$@"; fi; }
# The option's value: present and not another option (unless allow_dash).
value() {
  local opt="$1" allow_dash="$2"; shift 2
  [[ $# -ge 1 && -n "$1" ]] || die "$opt needs a value"
  [[ "$allow_dash" == 1 || "$1" != -* ]] || die "$opt needs a value (got option $1)"
  printf '%s' "$1"
}

tpu="" zone="" project="" create=0 accel="v5litepod-8" runtime="v2-alpha-tpuv5-lite"
repo="" branch="" data_dir="" copy_to="" dry_run=0
env_vars=() gcloud_flags=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == --?*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift; continue ;;
    --create) create=1; shift; continue ;;
    --) shift; break ;;
  esac
  [[ "$1" == -* ]] || die "unexpected argument: $1 (put s2gr_jax.main flags after --)"
  opt="$1"; shift
  case "$opt" in
    --tpu) tpu=$(value "$opt" 0 "$@") ;;
    --zone) zone=$(value "$opt" 0 "$@") ;;
    --project) project=$(value "$opt" 0 "$@") ;;
    --accelerator-type) accel=$(value "$opt" 0 "$@") ;;
    --version) runtime=$(value "$opt" 0 "$@") ;;
    --repo) repo=$(value "$opt" 0 "$@") ;;
    --branch) branch=$(value "$opt" 0 "$@") ;;
    --data-dir) data_dir=$(value "$opt" 0 "$@") ;;
    --copy-results) copy_to=$(value "$opt" 0 "$@") ;;
    --env)
      kv=$(value "$opt" 0 "$@")
      [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs KEY=VALUE, got: $kv"
      env_vars+=("$kv") ;;
    --gcloud-flag) gcloud_flags+=("$(value "$opt" 1 "$@")") ;;
    *) die "unknown option: $opt (put s2gr_jax.main flags after --)" ;;
  esac
  shift
done
[[ -n "$tpu" ]] || die "--tpu NAME is required"
[[ -n "$zone" ]] || die "--zone ZONE is required"
[[ $# -gt 0 ]] || die "missing s2gr_jax.main flags after --"
flags=("$@")
for a in "${flags[@]}"; do
  [[ "$a" != --multiprocess && "$a" != -multiprocess ]] || die "do not pass --multiprocess: it is always added"
done

# Where the code comes from: an existing local folder is uploaded, anything else cloned.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$repo" ]]; then
  repo=$(git -C "$here" remote get-url origin 2>/dev/null) ||
    die "--repo URL_OR_PATH is required: this repository has no git remote 'origin'"
fi
upload=0
if [[ -d "$repo" ]]; then
  upload=1
  [[ -z "$branch" ]] || die "--branch only applies to a git URL, not the local folder $repo"
fi

# The workdir (for --copy-results).
workdir=""
for ((i = 0; i < ${#flags[@]}; i++)); do
  case "${flags[i]}" in
    --workdir|-workdir) workdir="${flags[i + 1]:-}" ;;
    --workdir=*|-workdir=*) workdir="${flags[i]#*=}" ;;
  esac
done
if [[ -n "$copy_to" && -z "$workdir" ]]; then
  die "--copy-results needs --workdir DIR among the s2gr_jax.main flags"
fi

gcloud_loc=(--zone "$zone")
[[ -z "$project" ]] || gcloud_loc+=(--project "$project")
tpu_vm=(gcloud compute tpus tpu-vm)

# 1. Create the TPU VM unless it exists.
if [[ $create -eq 1 ]]; then
  describe=("${tpu_vm[@]}" describe "$tpu" "${gcloud_loc[@]}")
  create_cmd=("${tpu_vm[@]}" create "$tpu" "${gcloud_loc[@]}"
              --accelerator-type "$accel" --version "$runtime")
  if [[ $dry_run -eq 1 ]]; then
    show "${describe[@]}"
    echo "$(show "${create_cmd[@]}")  # only if describe fails"
  elif "${describe[@]}" >/dev/null 2>&1; then
    echo "$prog: TPU VM $tpu exists" >&2
  else
    "${create_cmd[@]}"
  fi
fi

# 2. Code and environment on every worker.
ssh_all=("${tpu_vm[@]}" ssh "$tpu" "${gcloud_loc[@]}" --worker=all "${gcloud_flags[@]}")
if [[ $upload -eq 1 ]]; then
  if [[ $dry_run -eq 1 ]]; then
    tarball="/tmp/s2gr_jax_src.XXXXXX.tar.gz"
  else
    tarball=$(mktemp "${TMPDIR:-/tmp}/s2gr_jax_src.XXXXXX")
    trap 'rm -f "$tarball"' EXIT
  fi
  run tar -czf "$tarball" --exclude=./.git --exclude=./.venv --exclude=./runs \
    --exclude=./build --exclude=./.whl --exclude=./.pytest_cache --exclude=__pycache__ \
    --exclude='*.egg-info' -C "$repo" .
  run "${tpu_vm[@]}" scp "$tarball" "$tpu:s2gr_jax_src.tar.gz" "${gcloud_loc[@]}" \
    --worker=all "${gcloud_flags[@]}"
  get_code="mkdir -p ~/s2gr_jax && tar -xzf ~/s2gr_jax_src.tar.gz -C ~/s2gr_jax"
  get_code+=" && rm -f ~/s2gr_jax_src.tar.gz"
else
  url=$(printf %q "$repo")
  if [[ -n "$branch" ]]; then
    b=$(printf %q "$branch")
    update="git -C ~/s2gr_jax fetch origin && git -C ~/s2gr_jax checkout $b"
    update+=" && if git -C ~/s2gr_jax symbolic-ref -q HEAD >/dev/null;"  # a branch, not a tag
    update+=" then git -C ~/s2gr_jax pull --ff-only origin $b; fi"
    clone="git clone --branch $b $url ~/s2gr_jax"
  else
    update="git -C ~/s2gr_jax pull --ff-only"
    clone="git clone $url ~/s2gr_jax"
  fi
  get_code="if [ -d ~/s2gr_jax/.git ]; then git -C ~/s2gr_jax remote set-url origin $url"
  get_code+=" && $update; else $clone; fi"
fi
# One && chain, so that the first failure stops it (whatever the login shell).
setup="$get_code && { [ -x ~/s2gr_venv/bin/python ] || python3 -m venv ~/s2gr_venv; }"
setup+=" && ~/s2gr_venv/bin/pip install -q -U pip"
setup+=" && ~/s2gr_venv/bin/pip install -q 'jax[tpu]'"
setup+=" && ~/s2gr_venv/bin/pip install -q -e ~/s2gr_jax\\[gcs\\]"  # gcsfs: gs:// workdirs
run "${ssh_all[@]}" --command "$setup"

# 3. The run, on every worker at once (JAX finds the other hosts itself).
remote="cd ~/s2gr_jax &&"
[[ -z "$data_dir" ]] || remote+=" S2GR_DATA_DIR=$(remote_q "$data_dir")"
for kv in "${env_vars[@]}"; do remote+=" ${kv%%=*}=$(remote_q "${kv#*=}")"; done
remote+=" ~/s2gr_venv/bin/python -m s2gr_jax.main --multiprocess"
for a in "${flags[@]}"; do remote+=" $(printf %q "$a")"; done
run "${ssh_all[@]}" --command "$remote"

# 4. Results back from worker 0.
if [[ -n "$copy_to" ]]; then
  if [[ "$workdir" == gs://* ]]; then
    echo "$prog: note: workdir $workdir is on GCS, nothing to copy (gsutil/gcloud storage cp it)" >&2
  else
    case "$workdir" in
      /*) src="$workdir" ;;
      \~) src="." ;;
      \~/*) src="${workdir#\~/}" ;;
      *) src="s2gr_jax/$workdir" ;;  # relative to ~/s2gr_jax, where the run starts
    esac
    run mkdir -p "$copy_to"
    run "${tpu_vm[@]}" scp --recurse --worker=0 "$tpu:$src" "$copy_to" "${gcloud_loc[@]}" \
      "${gcloud_flags[@]}"
  fi
fi
