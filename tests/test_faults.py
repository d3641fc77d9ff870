"""Faults: a killed run (SIGKILL, SIGTERM) and a corrupted checkpoint, each resumed with
the same command, end exactly where an uninterrupted run ends."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from s2gr_jax import run
import test_run

STEPS = 150
FLAGS = ["--config", "configs/default.py:tiny", *test_run.TINY,
         f"--config.train.num_steps={STEPS}", "--config.train.checkpoint_every=10",
         "--config.train.eval_every=50", "--config.train.log_every=10"]
OVERRIDES = {"train.num_steps": STEPS, "train.checkpoint_every": 10,
             "train.eval_every": 50, "train.log_every": 10}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  results = run.run(test_run.tiny_config(**OVERRIDES), str(workdir))
  return workdir, results


def start(workdir):
  return subprocess.Popen([sys.executable, "-m", "s2gr_jax.main", *FLAGS, "--workdir",
                           str(workdir)], cwd=test_run.ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(workdir: pathlib.Path, proc, at_least: int) -> None:
  last = workdir / "checkpoints" / "last"
  deadline = time.time() + 300
  while time.time() < deadline:
    steps = [int(p.name) for p in last.glob("*") if p.name.isdigit()] if last.exists() else []
    if steps and max(steps) >= at_least:
      return
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    time.sleep(0.05)
  raise AssertionError("no checkpoint appeared")


def assert_same_as(reference, workdir, results):
  ref_dir, ref_results = reference
  assert test_run.train_losses(str(workdir)) == test_run.train_losses(str(ref_dir))
  step_a, params_a = test_run.last_params(str(ref_dir))
  step_b, params_b = test_run.last_params(str(workdir))
  assert step_a == step_b == STEPS
  for a, b in zip(params_a, params_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for key in ("test/recall@10", "test/ndcg@10", "val/ndcg@10"):
    assert results[key] == ref_results[key]


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, reference):
  workdir = tmp_path / "killed"
  proc = start(workdir)
  wait_for_checkpoint(workdir, proc, 30)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (workdir / "results.json").exists()  # it really died mid-training
  results = run.run(test_run.tiny_config(**OVERRIDES), str(workdir))
  assert_same_as(reference, workdir, results)


def test_sigterm_saves_first_and_loses_no_step(tmp_path, reference):
  workdir = tmp_path / "terminated"
  proc = start(workdir)
  wait_for_checkpoint(workdir, proc, 20)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM: saving a checkpoint" in out
  stopped = int(out.split("Stopped at step ")[1].split()[0])
  last = workdir / "checkpoints" / "last"
  assert max(int(p.name) for p in last.glob("*") if p.name.isdigit()) == stopped
  results = run.run(test_run.tiny_config(**OVERRIDES), str(workdir))
  assert_same_as(reference, workdir, results)


def test_corrupted_latest_checkpoint_falls_back(tmp_path, reference, caplog):
  workdir = tmp_path / "corrupt"
  assert run.run(test_run.tiny_config(**OVERRIDES, **{"train.stop_at_step": 40}),
                 str(workdir)) == {}
  latest = workdir / "checkpoints" / "last" / "40"
  damaged = 0
  for f in latest.rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "state" in f.parts:
      f.write_bytes(b"garbage")
      damaged += 1
  assert damaged
  with caplog.at_level("WARNING"):
    results = run.run(test_run.tiny_config(**OVERRIDES), str(workdir))
  assert "Checkpoint at step 40 cannot be restored" in caplog.text
  assert_same_as(reference, workdir, results)
