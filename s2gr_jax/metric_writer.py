"""Metrics to plain files: ``metrics.jsonl`` (one object per logged step) and
TensorBoard event files (tensorboardX, no TensorFlow), and optionally to Weights & Biases
(``config.wandb.enabled``; imported only then). Only process 0 writes.

In a ``gs://`` workdir (an object store: no appends) the writer keeps ``metrics.jsonl``
in memory and uploads it whole, and writes TensorBoard events to a local staging folder
whose files it uploads to ``workdir/tensorboard/``: at most every ``sync_secs`` while
metrics come in, and on every ``flush()`` (the training loop flushes before each
checkpoint, so a resumed run finds every line up to its checkpoint) and ``close()``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid

import jax
import numpy as np

from s2gr_jax import fileio

log = logging.getLogger(__name__)

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
  id_path = fileio.join(workdir, WANDB_ID_FILE)
  if id_path.exists():
    run_id = id_path.read_text().strip()
  else:
    run_id = uuid.uuid4().hex[:16]
    id_path.write_text(run_id + "\n")
  return wandb.init(
      project=options.project, entity=options.entity or None,
      name=options.name or os.path.basename(str(workdir).rstrip("/")), id=run_id,
      resume="allow", dir=None if fileio.is_remote(workdir) else workdir,
      mode=options.mode, config=run_config)


class MetricWriter:

  def __init__(self, workdir: str, wandb_options=None, run_config: dict | None = None,
               sync_secs: float = 30.0):
    self.enabled = jax.process_index() == 0
    self.path = fileio.join(workdir, METRICS_FILE)
    self._remote = fileio.is_remote(workdir)
    self._tb_dir = fileio.join(workdir, "tensorboard")
    self._lines: list[str] | None = None  # remote: the whole metrics.jsonl
    self._staging = None  # remote: local folder of the TensorBoard event files
    self._sync_secs, self._synced_at = sync_secs, time.time()
    self._tb = None
    self._wandb = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      if self._remote:
        self._lines = self._read_lines()
        self._staging = tempfile.mkdtemp(prefix="s2gr_tensorboard_")
      self._tb = SummaryWriter(self._staging or str(self._tb_dir), flush_secs=30)
      if wandb_options is not None and wandb_options.enabled:
        try:
          self._wandb = _start_wandb(workdir, wandb_options, run_config)
        except BaseException:
          # Close what is open: left to tensorboardX's exit hook, the close starts a
          # thread at interpreter shutdown, which Python 3.12 refuses.
          self._tb.close()
          if self._staging:
            shutil.rmtree(self._staging, ignore_errors=True)
          raise

  def _read_lines(self) -> list[str]:
    if not self.path.exists():
      return []
    return [line + "\n" for line in self.path.read_text().splitlines() if line.strip()]

  def truncate_after(self, step: int) -> None:
    """Drops what a resumed training run logs again: its lines after ``step`` and the
    final results (tokenizer lines have their own step count and stay)."""
    if not self.enabled:
      return
    def keep(record):
      if any(k.startswith("final/") for k in record):
        return False
      return record["step"] <= step or all(
          k == "step" or k.startswith("tokenizer/") for k in record)
    lines = self._lines if self._remote else self._read_lines()
    records = [_parse(line) for line in lines]
    damaged = sum(r is None for r in records)
    if damaged:  # e.g. the last line of a run killed while writing it
      log.warning("%s: dropping %d damaged line(s) that are not JSON records", self.path,
                  damaged)
    lines = [line for line, r in zip(lines, records) if r is not None and keep(r)]
    if self._remote:
      self._lines = lines
      self._sync()
    elif self.path.exists():
      self.path.write_text("".join(lines))

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _plain(v) for k, v in scalars.items()})
    line = json.dumps(record) + "\n"
    if self._remote:
      self._lines.append(line)
    else:
      with open(self.path, "a") as f:
        f.write(line)
    finite = {k: v for k, v in record.items()
              if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
    for key, value in finite.items():
      self._tb.add_scalar(key, value, step)
    if self._wandb is not None and finite:
      self._wandb.log(finite, step=int(step))
    if self._remote and time.time() - self._synced_at >= self._sync_secs:
      self._tb.flush()
      self._sync()

  def _sync(self) -> None:
    """Uploads metrics.jsonl and the TensorBoard event files (remote workdirs)."""
    self.path.write_text("".join(self._lines))
    for name in sorted(os.listdir(self._staging)):
      fileio.copy(os.path.join(self._staging, name), self._tb_dir / name)
    self._synced_at = time.time()

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      if self._remote:
        self._sync()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      if self._remote:
        self._sync()
        shutil.rmtree(self._staging, ignore_errors=True)
      self._tb = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


def _parse(line: str) -> dict | None:
  try:
    record = json.loads(line)
  except json.JSONDecodeError:
    return None
  return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def read_metrics(workdir: str) -> list[dict]:
  text = fileio.read_text(fileio.join(workdir, METRICS_FILE))
  return [r for r in map(_parse, text.splitlines()) if r is not None]
