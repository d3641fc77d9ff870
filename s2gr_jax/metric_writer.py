"""Metrics to plain files: ``metrics.jsonl`` (one object per logged step) and
TensorBoard event files (tensorboardX, no TensorFlow), and optionally to Weights & Biases
(``config.wandb.enabled``; imported only then). Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import uuid

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


WANDB_ID_FILE = "wandb_run_id.txt"


def _start_wandb(workdir: str, options, run_config: dict | None):
  """A W&B run for this workdir; a resumed job continues the same W&B run (its id is
  kept in ``workdir/wandb_run_id.txt``)."""
  try:
    import wandb  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("config.wandb.enabled=True needs the wandb package: "
                      "pip install 's2gr_jax[wandb]' (or pip install wandb)") from e
  id_path = os.path.join(workdir, WANDB_ID_FILE)
  if os.path.exists(id_path):
    with open(id_path) as f:
      run_id = f.read().strip()
  else:
    run_id = uuid.uuid4().hex[:16]
    with open(id_path, "w") as f:
      f.write(run_id + "\n")
  return wandb.init(
      project=options.project, entity=options.entity or None,
      name=options.name or os.path.basename(os.path.normpath(workdir)), id=run_id,
      resume="allow", dir=workdir, mode=options.mode, config=run_config)


class MetricWriter:

  def __init__(self, workdir: str, wandb_options=None, run_config: dict | None = None):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    self._wandb = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)
      if wandb_options is not None and wandb_options.enabled:
        self._wandb = _start_wandb(workdir, wandb_options, run_config)

  def truncate_after(self, step: int) -> None:
    """Drops what a resumed training run logs again: its lines after ``step`` and the
    final results (tokenizer lines have their own step count and stay)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    def keep(record):
      if any(k.startswith("final/") for k in record):
        return False
      return record["step"] <= step or all(
          k == "step" or k.startswith("tokenizer/") for k in record)
    with open(self.path) as f:
      lines = [line for line in f if line.strip() and keep(json.loads(line))]
    with open(self.path, "w") as f:
      f.writelines(lines)

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _plain(v) for k, v in scalars.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    finite = {k: v for k, v in record.items()
              if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
    for key, value in finite.items():
      self._tb.add_scalar(key, value, step)
    if self._wandb is not None and finite:
      self._wandb.log(finite, step=int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]
