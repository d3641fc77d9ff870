"""Orbax checkpoints of a training run, in ``workdir/checkpoints/``.

* ``last/``: model + optimizer state, the Grain iterator position and the loop's own
  bookkeeping (step, best metric so far, patience, wall time), every
  ``train.checkpoint_every`` steps and when a run stops; rerunning the same command in the
  same workdir resumes from here (precedence: resume > scratch).
* ``best/``: model state only, whenever the validation selection metric improves; the
  final test uses it.

Saves are asynchronous (Orbax writes in the background and commits atomically, so a
run killed mid-save leaves the previous checkpoint as the latest complete one). A
checkpoint that fails to restore (corrupted files) is skipped with a warning in favour
of the one before it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from s2gr_jax import errors as errors_lib
from s2gr_jax import fileio

log = logging.getLogger(__name__)

_PROCESS_FILE = re.compile(r"^process_\d+-of-(\d+)\.json$")


def abstract_like(tree) -> Any:
  """Shapes, dtypes and shardings of ``tree``: the restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpoints:

  def __init__(self, workdir: str, max_to_keep: int):
    root = fileio.join(fileio.absolute(workdir), "checkpoints")  # local or gs://
    # Both managers can save the same step at once (a validation that improves at a
    # checkpoint step). With several processes their async saves meet at barriers named
    # after the step, so each manager needs its own prefix, else the second save's
    # barrier collides with the first's ("Barrier _async_commit_complete.40 is already
    # ongoing") and the run hangs.
    options = lambda keep, name: ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=name))
    self.last = ocp.CheckpointManager(root / "last", options=options(max_to_keep, "last"))
    self.best = ocp.CheckpointManager(root / "best", options=options(1, "best"))

  def latest_step(self) -> int | None:
    return self.last.latest_step()

  def save_last(self, step: int, state, data_iter, meta: dict) -> None:
    self.last.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter),
        meta=ocp.args.JsonSave(meta)), force=True)

  def restore_last(self, state_like, data_iter) -> tuple[Any, dict]:
    """Restores the newest readable checkpoint onto the shardings of ``state_like``
    and moves ``data_iter`` to its position; older ones are tried when it fails."""
    steps = sorted(self.last.all_steps(), reverse=True)
    if steps:
      self._check_process_count(steps[0])
    errors = []
    for step in steps:
      try:
        restored = self.last.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(state_like)),
            data=grain.checkpoint.CheckpointRestore(data_iter),
            meta=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except  (any unreadable file)
        log.warning("Checkpoint at step %d cannot be restored (%s: %s); trying the "
                    "previous one", step, type(e).__name__, str(e).splitlines()[0][:200])
        errors.append(f"step {step}: {e}")
        continue
      if errors:
        # Keep the unreadable ones from being picked again when the run saves next.
        for bad in steps[:len(errors)]:
          self.last.delete(bad)
      return restored["state"], dict(restored["meta"])
    raise errors_lib.DataError(
        f"{self.last.directory}: no checkpoint can be restored ("
        + "; ".join(e.splitlines()[0][:200] for e in errors) + "); the workdir is damaged:"
        " start a new one, or delete the checkpoints to train from the beginning")

  def _check_process_count(self, step: int) -> None:
    """The data-iterator positions are saved per process (``data/process_I-of-N.json``):
    a run resumes only with the process count that saved them."""
    names = [p.name for p in fileio.join(str(self.last.directory), str(step), "data")
             .glob("process_*-of-*.json")]
    counts = {int(m.group(1)) for m in map(_PROCESS_FILE.match, names) if m}
    if counts and counts != {jax.process_count()}:
      raise ValueError(
          f"the checkpoint at step {step} in {self.last.directory} was saved by "
          f"{max(counts)} processes (each keeps its own input-pipeline position) and this "
          f"run has {jax.process_count()}: resume with {max(counts)} processes, or start "
          "a new workdir")

  def save_best(self, step: int, model_state, meta: dict) -> None:
    self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(model_state), meta=ocp.args.JsonSave(meta)),
                   force=True)

  def has_best(self) -> bool:
    return self.best.latest_step() is not None

  def restore_best(self, model_state_like) -> tuple[Any, dict]:
    step = self.best.latest_step()
    try:
      restored = self.best.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_like(model_state_like)),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (any unreadable file)
      raise errors_lib.DataError(
          f"{self.best.directory}/{step}: the best checkpoint cannot be restored "
          f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); the "
          "workdir is damaged") from e
    return restored["state"], dict(restored["meta"])

  def wait(self) -> None:
    self.last.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.last.close()
    self.best.close()
