r"""A fair hyper-parameter search: ``python -m s2gr_jax.tune``.

  python -m s2gr_jax.tune --config configs/tiger_scientific.py:converge \
      --workdir runs/tune_tiger_sci \
      --space 'train.lr=float:1e-4:1e-2:log' --space 'model.tiger.dropout=float:0.0:0.3' \
      --space 'model.s2gr.num_clusters=choice:8,16,32' --space 'train.batch_size=int:128:512' \
      --trials 12 --seeds 0,1,2 [--search-seed 0] [--config.x=y ...]

The recipe is loaded as ``s2gr_jax.main`` loads it (``--config.x=y`` overrides too).
A ``--space`` is ``KEY=float:LO:HI[:log]``, ``KEY=int:LO:HI[:log]`` or
``KEY=choice:A,B,...``; KEY is an existing config key and the values take its type.

The rule, so that systems compared this way are compared fairly:

  * the search sees validation only: each trial is a normal run with ``eval.test=False``
    and its objective is the full validation set's ``val/<eval.select_metric>``; no trial
    ever computes a test metric;
  * every system gets the same budget: give each the same ``--trials`` (and ``--seeds``);
  * test is measured once, at the end: the chosen config (best validation value) is run
    with each of ``--seeds`` and reported as mean ± standard error.

Steps, all resumable (rerun the same command in the same workdir):

  1. SIDs once: unless a ``tokenizer.*`` key or ``model.name`` is searched, the tokenize
     stage runs once into ``WORKDIR/sids`` and every run reads that table
     (``tokenizer.from_workdir``).
  2. The search: an Optuna study (TPE, seeded by ``--search-seed``; the sampler is
     reseeded from it before each trial, so a resumed search samples what an
     uninterrupted one would) in ``WORKDIR/study.db``. Trial runs live in
     ``WORKDIR/trials/<hash of their params>`` with ``seed`` = the first of ``--seeds``.
     A rerun keeps the finished trials and runs only the missing ones; a trial a killed
     process left running is marked failed and its parameters are queued again (it
     resumes its own checkpoint). A trial whose loss turns non-finite counts as a trial
     of the budget, without a value. Run one command per workdir at a time.
  3. The finals: ``WORKDIR/final/seed_<s>`` for each seed, with ``eval.test=True``. The
     seed the trials used is not retrained: the best trial's checkpoint is evaluated
     (``stages=tokenize,evaluate``, ``init.from_workdir``) — the same config and seed.
     ``--trials 0`` skips the search and runs the recipe's own config (the untuned row).

Outputs in the workdir:

  tune.json   recipe, overrides, space, budget, sampler and seed, every trial (number,
              params, validation value, state, wall time), the chosen params, the finals
              and their table (mean ± s.e. over seeds) beside the baselines, wall times
  tune.md     the same as tables; the final table is also printed at the end
  sids/ trials/ final/ study.db   the runs (each a normal run directory) and the study
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import hashlib
import json
import logging
import math
import os
import shlex
import sys
import time
from typing import Any

from absl import app
from absl import flags
import jax
import numpy as np

from s2gr_jax import config_lib
from s2gr_jax import fileio
from s2gr_jax import main as main_lib

log = logging.getLogger("s2gr_jax.tune")

_SPACE = flags.DEFINE_multi_string(
    "space", [], "A searched key: KEY=float:LO:HI[:log], KEY=int:LO:HI[:log] or "
    "KEY=choice:A,B,... (repeat the flag for more keys).")
_TRIALS = flags.DEFINE_integer("trials", None, "Number of trials of the search (the "
                               "budget: give every compared system the same); 0 = no "
                               "search, the recipe's own config.", lower_bound=0)
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds of the final runs; the trials use the "
                           "first.")
_SEARCH_SEED = flags.DEFINE_integer("search-seed", 0, "Seed of the TPE sampler.")
flags.mark_flag_as_required("trials")

METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
STUDY_NAME = "tune"
N_STARTUP_TRIALS = 10  # TPE's default: random samples before the model of the trials
# Keys the search may not set: the seeds are --seeds, the split and metric are the rule.
RESERVED = ("seed", "stages", "eval.test", "eval.final_val", "eval.select_metric",
            "init.from_workdir", "tokenizer.from_workdir")


class SearchError(ValueError):
  """A mistake in the command (a space, the seeds, a workdir of another search): the
  entry point prints its one-line message."""


# --- the search space ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Dim:
  """One searched config key.

  Attributes:
    key: the config key, e.g. 'train.lr'.
    kind: 'float', 'int' or 'choice'.
    low: lower bound (float, int).
    high: upper bound (float, int).
    log: sample on a log scale (float, int).
    choices: the values (choice), of the config field's type.
    spec: the --space string it was parsed from.
  """

  key: str
  kind: str
  low: Any = None
  high: Any = None
  log: bool = False
  choices: tuple = ()
  spec: str = ""

  def suggest(self, trial):
    if self.kind == "float":
      return trial.suggest_float(self.key, self.low, self.high, log=self.log)
    if self.kind == "int":
      return trial.suggest_int(self.key, self.low, self.high, log=self.log)
    return trial.suggest_categorical(self.key, list(self.choices))

  def values(self) -> tuple:
    """The values whose validity is checked up front: the bounds, or every choice."""
    return self.choices if self.kind == "choice" else (self.low, self.high)

  def describe(self) -> str:
    if self.kind == "choice":
      return f"{self.key} ∈ {{{', '.join(map(str, self.choices))}}}"
    return f"{self.key} ∈ [{self.low}, {self.high}] ({self.kind}{', log' if self.log else ''})"

  def to_json(self) -> dict:
    return {k: v for k, v in dataclasses.asdict(self).items()
            if v not in (None, ()) and not (k == "log" and self.kind == "choice")}


def _leaf(config, key: str):
  """``config``'s value at ``key`` ('train.lr'); KeyError naming the key otherwise."""
  node = config
  parts = key.split(".")
  for i, part in enumerate(parts):
    if not hasattr(node, "keys") or part not in node:
      where = ".".join(parts[:i]) or "config"
      known = list(node.keys()) if hasattr(node, "keys") else []
      close = difflib.get_close_matches(part, known, n=1)
      hint = f" (did you mean {'.'.join(parts[:i] + close[:1])!r}?)" if close else ""
      raise KeyError(f"config has no key {key!r}: {where} has no {part!r}{hint}")
    node = node[part]
  if hasattr(node, "keys"):
    raise KeyError(f"config key {key!r} is a section, not a value; search one of its "
                   f"fields, e.g. {key}.{next(iter(node.keys()), 'x')}")
  return node


def set_value(config, key: str, value) -> None:
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def _number(text: str, kind: type, spec: str):
  try:
    value = float(text)
  except ValueError:
    raise SearchError(f"--space {spec!r}: {text!r} is not a number") from None
  if kind is int:
    if not value.is_integer():
      raise SearchError(f"--space {spec!r}: {text!r} is not an integer")
    return int(value)
  return value


def _coerce(text: str, field_type: type, spec: str):
  """A choice value, as the config field's type."""
  if field_type is bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0"):
      raise SearchError(f"--space {spec!r}: {text!r} is not a bool (true/false)")
    return lowered in ("true", "1")
  if field_type in (int, float):
    return _number(text, field_type, spec)
  return text


def parse_dim(spec: str, config) -> Dim:
  """One ``--space`` string → a ``Dim`` whose values have the config field's type."""
  usage = "KEY=float:LO:HI[:log], KEY=int:LO:HI[:log] or KEY=choice:A,B,..."
  key, sep, rest = spec.partition("=")
  key = key.strip()
  kind, _, args = rest.partition(":")
  if not sep or not key or kind not in ("float", "int", "choice") or not args:
    raise SearchError(f"--space {spec!r}: expected {usage}")
  if key in RESERVED or key.startswith("wandb."):
    raise SearchError(f"--space {spec!r}: {key} cannot be searched (the seeds are "
                     "--seeds; the split, metric and stages are fixed by the rule)")
  current = _leaf(config, key)
  field_type = type(current)
  if isinstance(current, (tuple, list, dict)) or current is None:
    raise SearchError(f"--space {spec!r}: config.{key} is a {field_type.__name__}; only "
                     "numbers, bools and strings can be searched")
  if kind == "choice":
    choices = tuple(_coerce(v.strip(), field_type, spec) for v in args.split(","))
    if len(set(choices)) != len(choices) or any(v == "" for v in choices):
      raise SearchError(f"--space {spec!r}: choices must be distinct and non-empty")
    return Dim(key, "choice", choices=choices, spec=spec)
  if field_type not in (int, float) or field_type is bool:
    raise SearchError(f"--space {spec!r}: config.{key} is a {field_type.__name__}: use "
                     "choice:A,B,...")
  if kind == "float" and field_type is int:
    raise SearchError(f"--space {spec!r}: config.{key} is an int: use int:LO:HI or "
                     "choice:A,B,...")
  parts = args.split(":")
  if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
    raise SearchError(f"--space {spec!r}: expected {kind}:LO:HI or {kind}:LO:HI:log")
  number_type = int if kind == "int" else float
  low, high = (_number(p, number_type, spec) for p in parts[:2])
  is_log = len(parts) == 3
  if not low < high:
    raise SearchError(f"--space {spec!r}: LO must be below HI")
  if is_log and low <= 0:
    raise SearchError(f"--space {spec!r}: a log scale needs LO > 0")
  if field_type is float:  # int:LO:HI over a float field: the field's type
    low, high = float(low), float(high)
  return Dim(key, kind, low=low, high=high, log=is_log, spec=spec)


def parse_space(specs, config) -> list[Dim]:
  """The ``--space`` strings → dims, checked: keys exist and are distinct, and every
  bound (or choice) makes a config that ``config_lib.validate`` accepts."""
  dims = []
  for spec in specs:
    try:
      dims.append(parse_dim(spec, config))
    except KeyError as e:
      raise SearchError(f"--space {spec!r}: {e.args[0]}") from None
  keys = [d.key for d in dims]
  if len(set(keys)) != len(keys):
    raise SearchError(f"--space: a key is given twice in {keys}")
  for dim in dims:
    for value in dim.values():
      probe = config.copy_and_resolve_references()
      set_value(probe, dim.key, _cast(config, dim.key, value))
      try:
        config_lib.validate(probe)
      except ValueError as e:
        raise SearchError(f"--space {dim.spec!r}: {dim.key}={value!r} is not a valid "
                         f"config: {e}") from None
  return dims


def _cast(config, key: str, value):
  field_type = type(_leaf(config, key))
  return float(value) if field_type is float else value


def tunes_tokenizer(dims) -> bool:
  return any(d.key.startswith("tokenizer.") or d.key == "model.name" for d in dims)


# --- configs of the runs ------------------------------------------------------------------

def run_config(base, params: dict, **values):
  """``base`` with the searched ``params`` and ``values`` (``seed``, ``eval.test``, ...,
  dotted keys passed as ``eval__test``) set."""
  config = base.copy_and_resolve_references()
  for key, value in params.items():
    set_value(config, key, _cast(base, key, value))
  for key, value in values.items():
    set_value(config, key.replace("__", "."), value)
  return config


def params_hash(params: dict) -> str:
  return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def _read_json(path: str):
  """A JSON file of the search's workdir, or None; a damaged one is a ``DataError``."""
  if not os.path.exists(path):
    return None
  return fileio.read_json(path)


def _write(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _run(config, workdir: str, compared=None) -> dict:
  """One normal run in ``workdir``, refusing a workdir made with another config (only
  the keys starting with ``compared``, when given)."""
  from s2gr_jax import run as run_lib  # pylint: disable=g-import-not-at-top
  saved = _read_json(os.path.join(workdir, "config.json"))
  if saved is not None:
    diff = [d for d in config_lib.differences(saved, config.to_dict())
            if compared is None or d.startswith(compared)]
    if diff:
      raise SearchError(f"{workdir} holds a run of another config ({'; '.join(diff[:3])}"
                        f"{'; ...' if len(diff) > 3 else ''}): the chosen config changed "
                        "(more trials, another space or recipe); remove that directory "
                        "or use a new --workdir")
  results = run_lib.run(config, workdir)
  if not results and "evaluate" in config.stages:
    raise RuntimeError(f"{workdir}: the run stopped before evaluating (train.stop_at_step "
                       "set?); the search needs finished runs")
  return results


# --- the study ----------------------------------------------------------------------------

def _sampler(search_seed: int, index: int):
  """TPE seeded from (--search-seed, index of the trial in the budget): the same samples
  whether or not the search was interrupted."""
  import optuna  # pylint: disable=g-import-not-at-top
  seed = int(np.random.SeedSequence([search_seed, index]).generate_state(1)[0])
  return optuna.samplers.TPESampler(seed=seed, n_startup_trials=N_STARTUP_TRIALS)


def open_study(workdir: str, identity: dict):
  """The study in ``workdir/study.db`` (created or resumed), checked to be this search."""
  import optuna  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  storage = f"sqlite:///{os.path.abspath(os.path.join(workdir, 'study.db'))}"
  study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize",
                              sampler=_sampler(identity["search_seed"], 0),
                              load_if_exists=True)
  stored = study.user_attrs.get("identity")
  if stored is None:
    study.set_user_attr("identity", identity)
  else:
    diff = [f"{k}: {stored.get(k)!r} vs {identity[k]!r}" for k in
            ("space", "trial_seed", "search_seed", "objective") if stored.get(k) != identity[k]]
    diff += config_lib.differences(stored["config"], identity["config"])
    if diff:
      raise SearchError(f"{workdir}/study.db belongs to another search ({'; '.join(diff[:3])}"
                       f"{'; ...' if len(diff) > 3 else ''}); use a new --workdir")
  return study


def counted(trial) -> bool:
  """A trial of the budget: it finished, or its loss diverged (a result of its params)."""
  from optuna.trial import TrialState  # pylint: disable=g-import-not-at-top
  return (trial.state == TrialState.COMPLETE
          or (trial.state == TrialState.FAIL and "diverged" in trial.user_attrs))


def requeue_unfinished(study) -> None:
  """Trials a killed (or crashed) process left: marked failed, their params queued again."""
  from optuna.trial import TrialState  # pylint: disable=g-import-not-at-top
  for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
    log.info("Trial %d was left running (process killed): marked failed", trial.number)
    study.tell(trial.number, state=TrialState.FAIL)
  trials = study.get_trials(deepcopy=False)
  retried = {t.user_attrs.get("retry_of") for t in trials}
  for trial in trials:
    if (trial.state == TrialState.FAIL and not counted(trial)
        and trial.number not in retried):
      log.info("Trial %d: queued again with its params %s", trial.number, trial.params)
      study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def run_trial(study, dims, base, workdir: str, trial_seed: int, sids: str | None,
              search_seed: int, index: int):
  """Asks the study for one trial, runs it on validation only, tells the value."""
  from optuna.trial import TrialState  # pylint: disable=g-import-not-at-top
  from s2gr_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  study.sampler = _sampler(search_seed, index)
  trial = study.ask()
  params = {d.key: d.suggest(trial) for d in dims}
  trial_dir = os.path.join(workdir, "trials", params_hash(params))
  trial.set_user_attr("workdir", trial_dir)
  log.info("Trial %d (%d of the budget): %s → %s", trial.number, index + 1, params,
           trial_dir)
  # A trial is scored on the full validation set, whatever the recipe's final_val.
  overrides = {"seed": trial_seed, "eval__test": False, "eval__final_val": True}
  if sids:
    overrides["tokenizer__from_workdir"] = sids
  metric = f"val/{base.eval.select_metric}"
  try:
    results = _run(run_config(base, params, **overrides), trial_dir)
  except train_lib.NonFiniteLossError as e:
    trial.set_user_attr("diverged", str(e).splitlines()[0][:300])
    study.tell(trial, state=TrialState.FAIL)
    log.info("Trial %d diverged (%s): counted, without a value", trial.number, e)
    return
  except BaseException as e:
    trial.set_user_attr("error", f"{type(e).__name__}: {str(e)[:300]}")
    study.tell(trial, state=TrialState.FAIL)
    raise
  if any(k.startswith("test/") for k in results):
    raise AssertionError(f"trial {trial.number} computed test metrics")  # the rule
  value = float(results[metric])
  if not math.isfinite(value):
    trial.set_user_attr("diverged", f"{metric} = {value}")
    study.tell(trial, state=TrialState.FAIL)
    return
  study.tell(trial, value)
  log.info("Trial %d: %s = %.4f", trial.number, metric, value)


def trial_record(trial) -> dict:
  # An interrupted trial's duration includes the time until the rerun noticed it; its
  # retry (which resumes the checkpoint) has the time that counts.
  wall = trial.duration.total_seconds() if trial.duration and counted(trial) else None
  return {"number": trial.number, "params": trial.params, "value": trial.value,
          "state": trial.state.name, "wall_s": wall,
          "workdir": trial.user_attrs.get("workdir"),
          **{k: trial.user_attrs[k] for k in ("retry_of", "diverged", "error")
             if k in trial.user_attrs}}


# --- the report ---------------------------------------------------------------------------

def final_table(finals: list[dict]) -> dict:
  """split → row → metric → [mean, s.e.] over the finals; the baselines' rows as well."""
  from s2gr_jax import baselines as baselines_lib  # pylint: disable=g-import-not-at-top
  from s2gr_jax import report  # pylint: disable=g-import-not-at-top
  table = {}
  for split in ("test", "val"):
    rows = {"model": {m: list(report.mean_se([f["results"][f"{split}/{m}"]
                                              for f in finals])) for m in METRICS}}
    for name in baselines_lib.NAMES:
      keys = [f"baselines/{name}/{split}/{m}" for m in METRICS]
      if all(k in finals[0]["results"] for k in keys):
        rows[name] = {m: list(report.mean_se([f["results"][k] for f in finals]))
                      for m, k in zip(METRICS, keys)}
    table[split] = rows
  return table


def table_markdown(summary: dict, split: str) -> str:
  rows = summary["table"][split]
  seeds = summary["seeds"]
  head = "| row | seeds | " + " | ".join(
      m.replace("recall", "R").replace("ndcg", "N") for m in METRICS) + " |"
  lines = [head, "|---" * (len(METRICS) + 2) + "|"]
  for name, cells in rows.items():
    if name == "model":
      text = [f"{m:.4f} ± {se:.4f}" if len(seeds) > 1 else f"{m:.4f}"
              for m, se in (cells[k] for k in METRICS)]
      lines.append(f"| {summary['row_label']} | {len(seeds)} | " + " | ".join(text) + " |")
    else:
      lines.append(f"| {name} | – | " + " | ".join(f"{cells[k][0]:.4f}" for k in METRICS)
                   + " |")
  return "\n".join(lines)


def _fmt(value) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(summary: dict) -> str:
  space = summary["space"]
  keys = [d["key"] for d in space]
  objective = summary["objective"]
  wall = summary["wall_s"]
  overrides = " ".join(f"--config.{k}={v}" for k, v in summary["overrides"].items())
  sampler = summary["sampler"]
  parts = [
      f"# Hyper-parameter search: `{summary['recipe']}`", "",
      "Searched on validation only (`eval.test=False` in every trial); test measured once, "
      "on the chosen config, over the seeds. Compare systems searched with the same "
      "`--trials` and `--seeds`.", "",
      f"- command: `{summary['command']}`",
      f"- recipe: `{summary['recipe']}`; overrides: `{overrides or 'none'}`",
      f"- objective: `{objective}` (full validation set), maximised",
      "- search space: " + ("; ".join(f"`{Dim(**d).describe()}`" for d in space)
                            if space else "none"),
      f"- trials: {summary['trials_budget']} ({summary['trials_counted']} counted, "
      f"{summary['trials_diverged']} diverged); sampler {sampler['name']} (seed "
      f"{sampler['seed']}, {sampler['n_startup_trials']} random start-up trials, reseeded "
      "per trial)",
      f"- trial seed: {summary['trial_seed']}; final seeds: "
      f"{', '.join(map(str, summary['seeds']))}",
      f"- Semantic IDs: {summary['sids'] or 'built by each run (the tokenizer is searched)'}",
      ""]
  if summary["trials"]:
    parts += ["## Trials", "",
              "| # | " + " | ".join(f"`{k}`" for k in keys) + f" | {objective} | state | "
              "wall |", "|---" * (len(keys) + 4) + "|"]
    for t in summary["trials"]:
      value = "–" if t["value"] is None else f"{t['value']:.4f}"
      wall_t = "–" if t["wall_s"] is None else f"{t['wall_s']:.0f} s"
      state = t["state"] + (" (diverged)" if "diverged" in t else " (interrupted)"
                            if t["state"] == "FAIL" else "")
      if "retry_of" in t:
        state += f" (retry of {t['retry_of']})"
      parts.append(f"| {t['number']} | " + " | ".join(
          _fmt(t["params"].get(k, "–")) for k in keys) + f" | {value} | {state} | {wall_t} |")
    parts.append("")
  if summary["best_trial"] is not None:
    parts += [f"Chosen: trial {summary['best_trial']} ({objective} "
              f"{summary['best_value']:.4f}): "
              + ", ".join(f"`{k}={_fmt(v)}`" for k, v in summary["chosen_params"].items()), ""]
  else:
    parts += ["Chosen: the recipe's own config (no search).", ""]
  n = len(summary["seeds"])
  for split, title in (("test", "Test"), ("val", "Validation")):
    parts += [f"## {title} (mean ± s.e. over {n} seed{'s' if n > 1 else ''})", "",
              table_markdown(summary, split), ""]
  parts += [f"Wall time: Semantic IDs {wall['sids']:.0f} s, search {wall['search']:.0f} s "
            f"({len(summary['trials'])} trial runs), finals {wall['finals']:.0f} s; total "
            f"{wall['total']:.0f} s.", "", "Finals:", ""]
  for f in summary["finals"]:
    how = (f"evaluated from trial {f['from_trial']}'s checkpoint"
           if f["from_trial"] is not None else "trained")
    parts.append(f"- seed {f['seed']}: `{f['workdir']}` ({how}, {f['wall_s']:.0f} s)")
  return "\n".join(parts) + "\n"


# --- the command --------------------------------------------------------------------------

def tune(base, workdir: str, specs, trials: int, seeds: list[int], search_seed: int,
         recipe: str = "", overrides: dict | None = None, command: str = "") -> dict:
  """The search and the finals (module docstring); returns the summary (tune.json)."""
  from s2gr_jax import models  # pylint: disable=g-import-not-at-top
  t_start = time.time()
  if "://" in workdir:
    raise SearchError(f"--workdir={workdir!r}: the search keeps its study in a SQLite file; "
                     "use a local directory")
  if not seeds or len(set(seeds)) != len(seeds):
    raise SearchError(f"--seeds={seeds}: give distinct seeds, e.g. 0,1,2")
  dims = parse_space(specs, base)
  if trials > 0 and not dims:
    raise SearchError(f"--trials={trials} needs at least one --space")
  if trials == 0 and dims:
    log.info("--trials 0: no search; the --space flags are recorded, not used")
  os.makedirs(workdir, exist_ok=True)
  trial_seed = seeds[0]
  objective = f"val/{base.eval.select_metric}"

  # The study first: a workdir of another search is refused before anything runs.
  study = None
  if trials > 0:
    identity = {"space": [{k: v for k, v in d.to_json().items() if k != "spec"}
                          for d in dims], "trial_seed": trial_seed,
                "search_seed": search_seed, "objective": objective,
                "config": base.to_dict()}
    study = open_study(workdir, json.loads(json.dumps(identity)))

  # 1. One SID table for every run (unless the tokenizer is searched).
  sids = None
  sids_wall = 0.0
  if models.get(base.model.name).uses_sids and not tunes_tokenizer(dims):
    sids = os.path.join(workdir, "sids")
    log.info("Semantic IDs once, for every run: %s", sids)
    _run(run_config(base, {}, stages="tokenize"), sids,
         compared=("data.", "tokenizer.", "model.name"))
    stats = _read_json(os.path.join(sids, "sid", "codebook_stats.json")) or {}
    sids_wall = float(stats.get("wall_s", 0.0))

  # 2. The search, on validation only.
  records, best, chosen = [], None, {}
  n_counted = n_diverged = 0
  search_wall = 0.0
  if study is not None:
    requeue_unfinished(study)
    n_counted = sum(counted(t) for t in study.get_trials(deepcopy=False))
    if n_counted >= trials:
      log.info("Search: %d trials done already (budget %d)", n_counted, trials)
    while n_counted < trials:
      run_trial(study, dims, base, workdir, trial_seed, sids, search_seed, n_counted)
      n_counted = sum(counted(t) for t in study.get_trials(deepcopy=False))
    all_trials = study.get_trials(deepcopy=False)
    budget = [t for t in all_trials if counted(t)][:trials]  # the first --trials
    n_diverged = sum(t.value is None for t in budget)
    records = [trial_record(t) for t in all_trials]
    search_wall = sum(r["wall_s"] or 0.0 for r in records)
    complete = [t for t in budget if t.value is not None]
    if not complete:
      raise RuntimeError(f"every one of the {trials} trials diverged: nothing to choose")
    best = max(complete, key=lambda t: (t.value, -t.number))  # ties: the earlier trial
    chosen = dict(best.params)
    log.info("Chosen: trial %d, %s = %.4f: %s", best.number, objective, best.value, chosen)

  # 3. The finals: the chosen config over the seeds, test measured once.
  previous = {f["seed"]: f for f in (_read_json(os.path.join(workdir, "tune.json")) or {})
              .get("finals", [])}
  finals = []
  for seed in seeds:
    final_dir = os.path.join(workdir, "final", f"seed_{seed}")
    values = {"seed": seed, "eval__test": True}
    if sids:
      values["tokenizer__from_workdir"] = sids
    from_trial = None
    if best is not None and seed == trial_seed:  # the same config and seed: no retraining
      from_trial = best.number
      best_dir = best.user_attrs["workdir"]
      values.update(stages="tokenize,evaluate", init__from_workdir=best_dir)
      if not sids:
        values["tokenizer__from_workdir"] = best_dir
    elif best is not None and not sids:  # the chosen trial's SIDs
      values["tokenizer__from_workdir"] = best.user_attrs["workdir"]
    config = run_config(base, chosen, **values)
    done = _read_json(os.path.join(final_dir, "results.json")) or {}
    saved = _read_json(os.path.join(final_dir, "config.json"))
    t0 = time.time()
    if (any(k.startswith("test/") for k in done) and saved is not None
        and not config_lib.differences(saved, config.to_dict())):
      results = done
      wall = (previous.get(seed) or {}).get("wall_s")
      if wall is None:
        wall = done.get("train/wall_s", 0.0) + done.get("eval/wall_s", 0.0)
      log.info("Final seed %d: done already (%s)", seed, final_dir)
    else:
      log.info("Final seed %d: %s → %s", seed,
               f"evaluating trial {from_trial}'s checkpoint" if from_trial is not None
               else "training", final_dir)
      results = _run(config, final_dir)
      wall = time.time() - t0
    finals.append({"seed": seed, "workdir": final_dir, "from_trial": from_trial,
                   "wall_s": wall, "results": {k: v for k, v in results.items()
                                               if k.split("/")[0] in ("val", "test")
                                               or k.startswith(("baselines/", "init/"))}})
  finals_wall = sum(f["wall_s"] for f in finals)

  model = base.model.name
  summary = {
      "command": command, "recipe": recipe, "overrides": overrides or {},
      "base_config": json.loads(json.dumps(base.to_dict())),
      "space": [d.to_json() for d in dims], "trials_budget": trials,
      "trials_counted": min(n_counted, trials), "trials_diverged": n_diverged,
      "sampler": {"name": "TPESampler", "seed": search_seed,
                  "n_startup_trials": N_STARTUP_TRIALS, "reseeded_per_trial": True},
      "objective": objective, "direction": "maximize", "trial_seed": trial_seed,
      "seeds": seeds, "sids": sids, "trials": records,
      "best_trial": None if best is None else best.number,
      "best_value": None if best is None else best.value,
      "best_workdir": None if best is None else best.user_attrs["workdir"],
      "chosen_params": chosen,
      "row_label": f"{model} (tuned, {trials} trials)" if trials else f"{model} (recipe)",
      "finals": finals,
      "wall_s": {"sids": sids_wall, "search": search_wall, "finals": finals_wall,
                 "total": sids_wall + search_wall + finals_wall,
                 "this_invocation": time.time() - t_start},
      "written": datetime.datetime.now().isoformat(timespec="seconds"),
  }
  summary["table"] = final_table(finals)
  _write(os.path.join(workdir, "tune.json"), json.dumps(summary, indent=2) + "\n")
  _write(os.path.join(workdir, "tune.md"), markdown(summary))
  return summary


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if flags.FLAGS.multiprocess:
    raise app.UsageError("--multiprocess: the search runs in one process (one host)")
  jax.config.update("jax_threefry_partitionable", True)
  main_lib.enable_compilation_cache()
  main_lib.setup_logging()
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flag = flags.FLAGS["config"]
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    raise SystemExit(f"error: --seeds={','.join(_SEEDS.value)}: give integers, e.g. "
                     "0,1,2") from None
  overrides = config_flags.get_override_values(config_flag)
  workdir = os.path.expanduser(flags.FLAGS.workdir)  # main's flags: --config, --workdir
  try:
    with main_lib.input_errors_end_the_run():
      summary = tune(flags.FLAGS.config, workdir, _SPACE.value, _TRIALS.value, seeds,
                     _SEARCH_SEED.value,
                     recipe=config_flags.get_config_filename(config_flag),
                     overrides=json.loads(json.dumps(overrides, default=str)),
                     command=shlex.join(["python", "-m", "s2gr_jax.tune", *sys.argv[1:]]))
  except SearchError as e:
    raise SystemExit(f"error: {e}") from None
  n = len(summary["seeds"])
  print(f"\nTest (mean ± s.e. over {n} seed{'s' if n > 1 else ''}; chosen on "
        f"{summary['objective']}):\n\n{table_markdown(summary, 'test')}\n\n"
        f"{os.path.join(workdir, 'tune.md')}")


if __name__ == "__main__":
  app.run(main, flags_parser=main_lib.parse_flags)
