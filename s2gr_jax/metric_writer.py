"""Metrics to plain files: ``metrics.jsonl`` (one object per logged step) and
TensorBoard event files (tensorboardX, no TensorFlow). Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class MetricWriter:

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

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
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(key, value, step)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]
