"""The recipe: ``config.stages`` in order (``stages.py``; by default tokenize → train →
evaluate) over one dataset, mesh and workdir.

Output contract in the workdir (a local path or a ``gs://bucket/dir`` URL: ``fileio``):

  config.json        the resolved config (config.previous.json: the one it replaced,
                     when a rerun changed a value)
  environment.json   package versions, devices, git commit
  sid/               sid_table.npz, codebook_stats.json, fingerprint.json
  checkpoints/       last/ (resume) and best/ (selected on validation)
  metrics.jsonl      one JSON object per logged step (train/*, val/*, perf/*)
  tensorboard/       the same as TensorBoard event files
  results.json       flat keys: val/ndcg@10, test/recall@10, baselines/..., train/...
  results.md         the results table, one row per evaluating stage and the baselines

Rerunning the same command in the same workdir resumes where it stopped; a finished run
is re-evaluated from its best checkpoint.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess

import jax

from s2gr_jax import checkpoints as ckpt_lib
from s2gr_jax import config_lib
from s2gr_jax import errors
from s2gr_jax import fileio
from s2gr_jax import metric_writer
from s2gr_jax import parallel
from s2gr_jax import stages as stages_lib
from s2gr_jax.data import datasets
from s2gr_jax.data import pipeline

log = logging.getLogger(__name__)

# --- outputs ----------------------------------------------------------------------------

def _environment() -> dict:
  import flax, optax, orbax.checkpoint, grain  # pylint: disable=g-import-not-at-top,multiple-imports
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(__file__), check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = None
  return {"python": platform.python_version(), "jax": jax.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax": orbax.checkpoint.__version__, "grain": grain.__version__,
          "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "process_count": jax.process_count(), "git_commit": commit,
          "machine": platform.machine(), "cpu_count": os.cpu_count()}


# Keys that choose what a command does to a workdir (which stages, where to pause), not
# what it computes: a normal resumption changes them.
_HOW_A_RUN_IS_DRIVEN = ("stage", "stages", "train.stop_at_step", "rl.stop_at_step")


def _note_changed_config(workdir: str, config_dict: dict) -> None:
  """Says so when ``workdir`` was written by another config, and keeps that config.

  Resuming under changed values is allowed (more steps, another stage, an RL stage
  after training), but it is not silent: every result-changing key that differs is
  logged, and the config that wrote the workdir's files is kept as
  ``config.previous.json`` before ``config.json`` is replaced.
  """
  path = fileio.join(workdir, "config.json")
  if jax.process_index() != 0 or not fileio.exists(path):
    return
  try:
    saved = fileio.read_json(path)
  except errors.DataError as e:  # only a record: the run rewrites it
    log.warning("%s is damaged (%s); it is rewritten with this run's config", path, e)
    return
  if not isinstance(saved, dict):
    return
  diff = config_lib.differences(saved, config_dict, ignore=_HOW_A_RUN_IS_DRIVEN)
  if not diff:
    return
  stages_lib.write_json(fileio.join(workdir, "config.previous.json"), saved)
  shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
  log.warning("%s was written by another config (saved vs now: %s). Files already in the "
              "workdir (checkpoints, Semantic IDs) continue under the new values; the "
              "old config is kept as config.previous.json.", path, shown)


# --- the run ----------------------------------------------------------------------------

def run(config, workdir: str) -> dict:
  """Runs the stages of ``config`` in ``workdir``; returns the results dict ({} when a
  stage stopped early on request or no stage evaluates)."""
  config = config_lib.resolve(config)
  config_lib.validate(config)
  plan = stages_lib.from_config(config)
  fileio.check_run_dir("workdir", workdir)
  fileio.makedirs(workdir)
  _note_changed_config(workdir, config.to_dict())
  try:
    stages_lib.write_json(fileio.join(workdir, "config.json"), config.to_dict())
  except Exception as e:  # pylint: disable=broad-except  (any backend's error)
    raise OSError(f"workdir={workdir!r}: cannot write config.json there ({type(e).__name__}: "
                  f"{e}). Check that the directory (or the gs:// bucket) exists and is "
                  "writable with this machine's credentials.") from e
  stages_lib.write_json(fileio.join(workdir, "environment.json"), _environment())
  mesh = parallel.make_mesh(config.mesh)
  log.info("Devices: %d × %s; mesh %s", jax.device_count(), jax.default_backend(),
           dict(mesh.shape))

  dataset = datasets.load_dataset(config.data)
  split = pipeline.LeaveOneOut.from_sequences(dataset.sequences)
  ckpts = ckpt_lib.Checkpoints(workdir, config.checkpoint.max_to_keep)
  writer = metric_writer.MetricWriter(workdir, config.wandb, config.to_dict())
  ctx = stages_lib.RunContext(config=config, workdir=workdir, mesh=mesh, dataset=dataset,
                              split=split, ckpts=ckpts, writer=writer)
  try:
    for stage in plan:
      stage.run(ctx)
      if ctx.stopped:
        return {}
    if not {"evaluate", "eval"} & {s.name for s in plan}:
      log.info("Stages %s done; the Semantic IDs are in %s", ",".join(s.name for s in plan),
               fileio.join(workdir, "sid"))
    return ctx.results
  finally:
    writer.close()
    ckpts.close()
