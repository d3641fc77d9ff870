"""Training of a model: optimizer, shape-first state, the supervised step, the loop.

Read top to bottom: optimizer → what is trainable → shape-first state → the supervised
train step → the loop (progress, validation, early stopping, checkpoints, resume).
The loop takes its step as an argument, so another objective (an RL step with a frozen
reference policy, adapters) trains through the same loop; evaluation is ``evaluate.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import signal
import time
from typing import Any, Callable

from flax import nnx
import jax
import numpy as np
import optax

from s2gr_jax import checkpoints as ckpt_lib
from s2gr_jax import parallel
from s2gr_jax.data import batches as batches_lib

log = logging.getLogger(__name__)


# --- compile time ----------------------------------------------------------------------

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compile_total = [0.0]


def _on_duration(event: str, duration: float, **_) -> None:
  if event in _COMPILE_EVENTS:
    _compile_total[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def compile_seconds() -> float:
  """Seconds this process has spent tracing, lowering and compiling (jax.monitoring)."""
  return _compile_total[0]


# --- optimizer ------------------------------------------------------------------------

def make_schedule(tcfg) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=tcfg.lr, warmup_steps=tcfg.warmup_steps,
      decay_steps=tcfg.num_steps, end_value=tcfg.lr * tcfg.end_lr_ratio)


def make_optimizer(tcfg) -> optax.GradientTransformation:
  """AdamW with warm-up and cosine decay; no weight decay on norms (1-D parameters)."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  return optax.chain(
      optax.clip_by_global_norm(tcfg.grad_clip),
      optax.adamw(make_schedule(tcfg), b1=tcfg.b1, b2=tcfg.b2,
                  weight_decay=tcfg.weight_decay, mask=decay_mask))


# --- what is trainable -------------------------------------------------------------------

ALL_PARAMS = nnx.Param


def trainable(spec: str = ""):
  """An NNX filter of the parameters the optimizer updates (``train.trainable``).

  ``""``: every ``nnx.Param`` (full training). Otherwise a regular expression over
  parameter paths (``decoder/0/mlp/wi/kernel``): the matching parameters train, the
  rest stay frozen. Adapters pass their own variable type (e.g. ``nnx.LoRAParam``)
  straight to ``create_state`` and ``make_train_step``.
  """
  if not spec:
    return ALL_PARAMS
  try:
    pattern = re.compile(spec)
  except re.error as e:
    raise ValueError(f"config.train.trainable={spec!r} is not a regular expression: "
                     f"{e}") from e

  def on_path(path, _):
    return bool(pattern.search("/".join(str(p) for p in path)))

  return nnx.All(nnx.Param, on_path)


# --- state, built shape-first -----------------------------------------------------------

def create_state(make_model: Callable[[nnx.Rngs], nnx.Module],
                 tx: optax.GradientTransformation, seed: int, mesh,
                 rules=parallel.DEFAULT_RULES, wrt=ALL_PARAMS):
  """Graph definitions and the state of (model, optimizer), created on the mesh.

  ``nnx.eval_shape`` gives the structure without allocating; one jitted init then
  materialises every array directly with its sharding from ``rules``. The optimizer
  holds moments for the parameters ``wrt`` selects (``trainable``).

  Returns:
    graphdef of (model, optimizer), graphdef of the model alone, and the state;
    ``state[0]`` is the model's part (what evaluation and the best checkpoint use).
  """
  def init():
    model = make_model(nnx.Rngs(params=jax.random.key(seed)))
    return model, nnx.Optimizer(model, tx, wrt=wrt)

  abstract_model, abstract_opt = nnx.eval_shape(init)
  if wrt is not ALL_PARAMS and not jax.tree.leaves(nnx.state(abstract_model, wrt)):
    raise ValueError("no parameter is trainable: the trainable filter (train.trainable) "
                     "matches none of the model's parameter paths")
  graphdef, abstract = nnx.split((abstract_model, abstract_opt))
  model_graphdef = nnx.split(abstract_model)[0]
  shardings = parallel.state_shardings(abstract, mesh, rules)
  state = jax.jit(lambda: nnx.split(init())[1], out_shardings=shardings)()
  return graphdef, model_graphdef, state


def param_count(state) -> int:
  return int(sum(x.size for x in jax.tree.leaves(state[0])))


# --- steps ------------------------------------------------------------------------------

def make_train_step(graphdef, schedule, wrt=ALL_PARAMS):
  """The supervised step: (state, batch, base_key) → (state, metrics); state is donated.

  Gradients of ``model.loss`` for the parameters ``wrt`` selects; dropout keys are the
  base key folded with the step. Any step with this signature (extra arguments after
  ``base_key`` are passed through by ``train_loop``'s ``step_args``) trains in the loop.
  """

  def train_step(state, batch, base_key):
    model, opt = nnx.merge(graphdef, state)
    step = opt.step[...]
    key = jax.random.fold_in(base_key, step)
    (_, metrics), grads = nnx.value_and_grad(
        lambda m: m.loss(batch, nnx.Rngs(dropout=key)), has_aux=True,
        argnums=nnx.DiffState(0, wrt))(model)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["lr"] = schedule(step)
    opt.update(model, grads)
    metrics["param_norm"] = optax.global_norm(nnx.state(model, nnx.Param))
    return nnx.split((model, opt))[1], metrics

  return jax.jit(train_step, donate_argnums=0)


# --- the loop ---------------------------------------------------------------------------

@dataclasses.dataclass
class LoopResult:
  state: Any
  step: int
  best_step: int
  best_metric: float
  stopped_early: bool
  finished: bool
  wall_s: float
  compile_s: float = 0.0  # of wall_s: tracing and compiling (train and validation steps)
  eval_s: float = 0.0  # of wall_s: validation, less its compilation


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class NonFiniteLossError(FloatingPointError):
  pass


class StopSignals:
  """Turns SIGTERM (and multi-host preemption notices) into a save-and-stop request."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    log.warning("SIGTERM: saving a checkpoint after this step, then stopping")
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if multihost_utils.reached_preemption_sync_point(step):
        log.warning("Preemption notice: saving at step %d, then stopping", step)
        self.requested = True
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_loop(config, *, train_step, state, mesh, train_ds,
               validate: Callable[[Any], dict[str, float]],
               ckpts: ckpt_lib.Checkpoints, writer, examples_per_step: int,
               step_args: tuple = ()) -> LoopResult:
  """Runs (or resumes) training to ``train.num_steps`` with validation and early stop.

  ``train_step(state, batch, base_key, *step_args) -> (state, metrics)`` is the jitted
  step (``make_train_step`` for supervised training); its metrics must hold ``loss`` and
  ``grad_norm`` (checked for NaN). ``state[0]`` is the model's state: what
  ``validate(model_state)`` scores and the best checkpoint (by ``eval.select_metric``)
  keeps; with ``train.validate_at_start`` the model it starts from is scored (step 0)
  and competes for the best checkpoint too.
  """
  tcfg = config.train
  select = config.eval.select_metric
  base_key = jax.random.key(config.seed)
  data_iter = iter(train_ds)

  meta = {"step": 0, "best_metric": -1.0, "best_step": -1, "evals_since_best": 0,
          "stopped_early": False, "train_wall_s": 0.0, "compile_s": 0.0, "eval_s": 0.0}
  if ckpts.latest_step() is not None:
    state, meta = ckpts.restore_last(state, data_iter)
    log.info("Resumed from checkpoint at step %d (best val %s %.4f at step %d)",
                 meta["step"], select, meta["best_metric"], meta["best_step"])
    writer.truncate_after(meta["step"])
  step = int(meta["step"])
  done = lambda: step >= tcfg.num_steps or meta["stopped_early"]
  stop_at = tcfg.stop_at_step if tcfg.stop_at_step >= 0 else None

  # The metrics of steps since the last progress line travel with the checkpoint, so a
  # resumed run logs the same averages as an uninterrupted one.
  window: list[dict] = meta.pop("window", [])

  def save_last():
    writer.flush()  # every metrics line up to this step is stored before the checkpoint
    logged = [{k: float(v) for k, v in m.items()} for m in window]
    ckpts.save_last(step, state, data_iter, dict(meta, step=step, window=logged))

  bar = None
  if tcfg.progress_bar and jax.process_index() == 0:
    from tqdm import auto as tqdm_auto  # pylint: disable=g-import-not-at-top
    bar = tqdm_auto.tqdm(total=tcfg.num_steps, initial=step, desc="train", unit="step")
  seen_shapes: set[tuple[int, ...]] = set()
  timed = 0  # steps run by this process since the last progress line
  window_start, run_start = time.time(), time.time()
  wall_at_start = float(meta["train_wall_s"])
  compile_at_start = float(meta.get("compile_s", 0.0)) - compile_seconds()
  pending = None  # (step, metrics) of the previous step: checked one step late
  def run_validation():
    t0, c0 = time.time(), compile_seconds()
    val = validate(state[0])
    eval_s = time.time() - t0
    meta["eval_s"] = float(meta.get("eval_s", 0.0)) + eval_s - (compile_seconds() - c0)
    writer.write(step, {**{f"val/{k}": v for k, v in val.items()}, "perf/val_s": eval_s})
    improved = val[select] > meta["best_metric"]
    if improved:
      meta.update(best_metric=val[select], best_step=step, evals_since_best=0)
      ckpts.save_best(step, state[0], {"step": step, "val": val})
    else:
      meta["evals_since_best"] += 1
      if 0 < tcfg.patience <= meta["evals_since_best"]:
        meta["stopped_early"] = True
    log.info("val @ %d: %s | best %s %.4f @ %d%s | %.1f s", step,
             " ".join(f"{k} {v:.4f}" for k, v in val.items() if "@10" in k),
             select, meta["best_metric"], meta["best_step"],
             " (early stop)" if meta["stopped_early"] else "", eval_s)
    return time.time() - t0

  if ckpts.latest_step() is None and tcfg.get("validate_at_start", False):
    run_validation()  # the starting model is a candidate for the best checkpoint
    save_last()  # (with its score: a resumed run does not score it again)
    window_start = time.time()
  with StopSignals() as signals:
    while not done():
      if stop_at is not None and step >= stop_at:
        log.info("Stopping at step %d (train.stop_at_step); rerun to continue.", step)
        break
      batch = parallel.shard_batch(next(data_iter), mesh)
      shapes = batches_lib.shapes(batch)
      if shapes not in seen_shapes:
        seen_shapes.add(shapes)
        log.info("Compiling the train step for batch shape %s ...",
                 tuple(batch.get("history_codes", next(iter(batch.values()))).shape))
        t0 = time.time()
        state, step_metrics = train_step(state, batch, base_key, *step_args)
        jax.block_until_ready(step_metrics)
        log.info("  compiled and ran in %.1f s", time.time() - t0)
        window_start += time.time() - t0  # keep compile time out of the throughput
      else:
        state, step_metrics = train_step(state, batch, base_key, *step_args)
      step += 1
      if pending is not None:
        _check_finite(*pending, ckpts)
      pending = (step, step_metrics)
      window.append(step_metrics)
      timed += 1
      if bar is not None:
        bar.update(1)

      if step % tcfg.log_every == 0 or step == tcfg.num_steps:
        _check_finite(*pending, ckpts)
        means = {f"train/{k}": float(np.mean([float(m[k]) for m in window]))
                 for k in window[0]}
        elapsed = max(time.time() - window_start, 1e-9)
        rate = timed / elapsed
        means["perf/steps_per_s"] = rate
        means["perf/examples_per_s"] = rate * examples_per_step
        writer.write(step, means)
        if bar is not None:
          bar.set_postfix(loss=f"{means['train/loss']:.4f}")
        log.info("step %d/%d | loss %.4f | %.2f steps/s | %.0f ex/s | ETA %s",
                 step, tcfg.num_steps, means["train/loss"], rate, rate * examples_per_step,
                 _format_eta((tcfg.num_steps - step) / rate))
        window, timed, window_start = [], 0, time.time()

      if step % tcfg.eval_every == 0 or step == tcfg.num_steps:
        window_start += run_validation()

      meta["train_wall_s"] = wall_at_start + time.time() - run_start
      meta["compile_s"] = compile_at_start + compile_seconds()
      stop_now = signals.should_stop(step)
      if step % tcfg.checkpoint_every == 0 or done() or step == stop_at or stop_now:
        _check_finite(*pending, ckpts)  # never checkpoint a state that went non-finite
        save_last()
      if stop_now:
        log.info("Stopped at step %d on request; the checkpoint is saved, rerun the same "
                 "command to resume.", step)
        break

  if bar is not None:
    bar.close()
  if pending is not None:
    _check_finite(*pending, ckpts)
  meta["train_wall_s"] = wall_at_start + time.time() - run_start
  meta["compile_s"] = compile_at_start + compile_seconds()
  if ckpts.latest_step() != step:
    save_last()
  ckpts.wait()
  writer.flush()
  return LoopResult(state=state, step=step, best_step=int(meta["best_step"]),
                    best_metric=float(meta["best_metric"]),
                    stopped_early=bool(meta["stopped_early"]), finished=done(),
                    wall_s=float(meta["train_wall_s"]),
                    compile_s=float(meta["compile_s"]), eval_s=float(meta["eval_s"]))


def _check_finite(step: int, step_metrics: dict, ckpts: ckpt_lib.Checkpoints) -> None:
  loss = float(step_metrics["loss"])
  grad_norm = float(step_metrics["grad_norm"])
  if np.isfinite(loss) and np.isfinite(grad_norm):
    return
  parts = ", ".join(f"{k}={float(v):.4g}" for k, v in step_metrics.items())
  last = ckpts.latest_step()
  raise NonFiniteLossError(
      f"non-finite training loss at step {step} ({parts}). Nothing after the last "
      f"checkpoint (step {last}) was saved, so the workdir is intact; lower train.lr, "
      "raise train.warmup_steps or check the input data, then rerun.")
