r"""The ``small`` benchmark suite: the real training job, end to end, against another commit.

TIGER and S²GR at the small size (d_model 64, 2+2 layers, batch 256, beam 20) are
trained as a user runs them, ``python -m s2gr_jax.main`` in a subprocess with a fresh
workdir, once with this checkout's code and once with the code of ``--against`` (a
temporary ``git worktree`` of that commit, imported through ``cwd`` and ``PYTHONPATH``;
same interpreter, same flags). Runs alternate (current, against, current, ...) for
``--rounds`` so that drift of a shared machine hits both sides. From each run's own
outputs the suite reads:

  examples/s     training examples per second, every logged window of ``metrics.jsonl``
                 (the loop keeps compilation and validation out of them), weighted by
                 its steps
  val users/s    validation users (``eval.val_users``, else the dataset's users) over
                 ``perf/val_s``, every validation but the first (it compiles)
  compile s      ``train/compile_s`` of ``results.json`` (train and validation steps),
                 else the sum of the log's "compiled and ran in" lines (train step
                 only): one source for both sides, the log when a side lacks the key
  wall s         the whole process: start-up, tokenizer, training, final evaluation

and reports each side's median over rounds and the ratios current / against. Each side
has one fresh ``JAX_COMPILATION_CACHE_DIR``, shared by its runs: round 1 compiles cold on
both sides, later rounds read their side's cache (``--cache-dir DIR``: ``DIR/current``
and ``DIR/against`` instead, kept, so that a later invocation starts warm). A run that
fails (e.g. a flag the old commit does not have) is reported with the last lines of its
stderr::

    python -m s2gr_jax.bench --suite small --against HEAD~1 --rounds 2 --steps 300 \
        --out small.json
    # Amazon data ($S2GR_DATA_DIR): configs/{model}_{data}.py:compare with TF-IDF
    # RQ-KMeans SIDs (no text encoder)
    python -m s2gr_jax.bench --suite small --data scientific --out small_sci.json
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SIDES = ("current", "against")
DATASETS = ("synthetic", "scientific", "beauty")
TAIL_LINES = 20  # of a failed run's stderr
_COMPILED = re.compile(r"compiled and ran in ([0-9.]+) s")
_PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
_SET_FOR_PARENT: list[str] = []  # variables set for this process only, not the runs


def keep_parent_light() -> None:
  """Called before this process starts JAX: it only names the device, so it takes no
  share of an accelerator's memory (the runs preallocate theirs as usual)."""
  if _PREALLOCATE not in os.environ:
    os.environ[_PREALLOCATE] = "false"
    _SET_FOR_PARENT.append(_PREALLOCATE)


# --- the commands -----------------------------------------------------------------------

def config_args(model: str, data: str, steps: int, *, tiny: bool = False,
                batch: int = 256) -> list[str]:
  """The ``main`` flags of one run (less ``--workdir``): the recipe at the small size,
  ``steps`` steps, logged every ≤ 50 steps and validated three times."""
  if data == "synthetic":
    args = ["--config=configs/default.py" + (":tiny" if tiny else ""),
            f"--config.model.name={model}"]
  else:  # the small models of the README's comparison; SIDs without a text encoder
    args = [f"--config=configs/{model}_{data}.py:" + ("tiny" if tiny else "compare"),
            "--config.tokenizer.embedding=text_tfidf", "--config.tokenizer.kind=rqkmeans"]
  if not tiny:
    args.append(f"--config.train.batch_size={batch}")
  return args + [f"--config.train.num_steps={steps}",
                 f"--config.train.warmup_steps={steps // 10}",
                 f"--config.train.log_every={max(1, min(50, steps // 6))}",
                 f"--config.train.eval_every={max(1, steps // 3)}"]


def _git(repo: str, *args: str) -> str:
  return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True,
                        check=True).stdout.strip()


def repo_root() -> str:
  """The checkout this package is imported from (the 'current' side)."""
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@contextlib.contextmanager
def worktree(repo: str, commit: str):
  """A detached ``git worktree`` of ``commit``, removed on exit."""
  path = tempfile.mkdtemp(prefix="s2gr_small_against_")
  os.rmdir(path)  # git creates it
  _git(repo, "worktree", "add", "--detach", path, commit)
  try:
    yield path
  finally:
    subprocess.run(["git", "-C", repo, "worktree", "remove", "--force", path],
                   capture_output=True, check=False)
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["git", "-C", repo, "worktree", "prune"], capture_output=True,
                   check=False)


# --- one run ----------------------------------------------------------------------------

def _tail(path: str, n: int = TAIL_LINES) -> str:
  with open(path, errors="replace") as f:
    return "".join(f.readlines()[-n:])


def parse_run(workdir: str, log_text: str) -> dict:
  """The figures of one finished run, from its workdir and its stdout."""
  from s2gr_jax import report  # pylint: disable=g-import-not-at-top
  run = report.load_run(workdir)
  lines, results, config, env = run["metrics"], run["results"], run["config"], run["env"]
  train = [r for r in lines if "perf/steps_per_s" in r and "perf/examples_per_s" in r]
  # Each progress line covers the steps since the previous one at its rate.
  steps, seconds, examples, previous = 0, 0.0, 0.0, 0
  for r in train:
    n = r["step"] - previous
    previous = r["step"]
    if n > 0 and r["perf/steps_per_s"] > 0:
      steps += n
      seconds += n / r["perf/steps_per_s"]
      examples += n * r["perf/examples_per_s"] / r["perf/steps_per_s"]
  num_users = results.get("data/num_users")
  val_users = config.get("eval", {}).get("val_users", 0)
  if not 0 < val_users < (num_users or float("inf")):
    val_users = num_users
  val_s = [r["perf/val_s"] for r in lines if "perf/val_s" in r]
  timed_val = val_s[1:]
  compiled = [float(x) for x in _COMPILED.findall(log_text)]
  model = config.get("model", {})
  section = model.get(model.get("name", ""), model)  # flat model sections of old commits
  return {
      "train_examples_per_s": examples / seconds if seconds else None,
      "train_steps_timed": steps,
      "val_users": val_users,
      "val_users_per_s": (val_users * len(timed_val) / sum(timed_val)
                          if val_users and timed_val and sum(timed_val) > 0 else None),
      "val_s": val_s,
      "compile_s_results": results.get("train/compile_s"),
      "compile_s_log": sum(compiled) if compiled else None,
      "compiled_and_ran_s": compiled,
      "train_wall_s": results.get("train/wall_s"),
      "git_commit": env.get("git_commit"),
      "size": {k: section.get(k) for k in ("d_model", "encoder_layers", "decoder_layers")},
      "batch": config.get("train", {}).get("batch_size"),
      "beam": config.get("eval", {}).get("beam_size"),
      "test_ndcg@10": results.get("test/ndcg@10"),
  }


def run_one(code_dir: str, args: list[str], cache_dir: str, timeout: float) -> dict:
  """``python -m s2gr_jax.main`` with the package of ``code_dir`` in a fresh workdir."""
  workdir = tempfile.mkdtemp(prefix="s2gr_small_run_")
  env = {k: v for k, v in os.environ.items() if k not in _SET_FOR_PARENT}
  env.update(PYTHONPATH=code_dir, JAX_COMPILATION_CACHE_DIR=cache_dir)
  out_path, err_path = os.path.join(workdir, "stdout.txt"), os.path.join(workdir, "stderr.txt")
  run_dir = os.path.join(workdir, "run")
  t0 = time.perf_counter()
  try:
    with open(out_path, "w") as out, open(err_path, "w") as err:
      try:
        proc = subprocess.run([sys.executable, "-m", "s2gr_jax.main", *args,
                               f"--workdir={run_dir}"], cwd=code_dir, env=env,
                              stdout=out, stderr=err, timeout=timeout, check=False)
        code = proc.returncode
      except subprocess.TimeoutExpired:
        code = "timeout"
    wall = time.perf_counter() - t0
    if code != 0:
      tail = _tail(err_path) or _tail(out_path)
      return {"ok": False, "returncode": code, "wall_s": wall, "stderr_tail": tail}
    with open(out_path, errors="replace") as f:
      figures = parse_run(run_dir, f.read())
    return {"ok": True, "wall_s": wall, **figures}
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


# --- the suite --------------------------------------------------------------------------

def _median(runs: list[dict], key: str):
  values = [r[key] for r in runs if r.get("ok") and r.get(key) is not None]
  return statistics.median(values) if values else None


def summarise(runs: list[dict]) -> dict:
  ok = [r for r in runs if r["ok"]]
  return {"runs_ok": len(ok), "runs_failed": len(runs) - len(ok),
          **{k: _median(runs, k) for k in ("train_examples_per_s", "val_users_per_s",
                                           "compile_s", "wall_s")},
          "compile_s_round1": runs[0].get("compile_s") if runs and runs[0]["ok"] else None,
          "runs": runs}


COMPILE_SOURCES = {"compile_s_results": "results.json train/compile_s (train and "
                                         "validation steps)",
                   "compile_s_log": "sum of the log's 'compiled and ran in' lines (train "
                                    "step, its first run included)"}


def set_compile_s(runs: list[dict]) -> str:
  """Sets every run's ``compile_s`` from one source, so that the sides compare:
  ``results.json``'s ``train/compile_s`` where every run has it (older commits do not),
  else the log lines; returns the source's key."""
  ok = [r for r in runs if r["ok"]]
  key = ("compile_s_results" if all(r["compile_s_results"] is not None for r in ok)
         else "compile_s_log")
  for r in ok:
    r["compile_s"] = r[key]
  return key


def _ratio(a, b):
  return a / b if a is not None and b else None


def suite_small(args) -> dict:
  if args.data not in DATASETS:
    raise ValueError(f"--data takes one of {', '.join(DATASETS)}, got {args.data!r}")
  names = [m for m in args.models.split(",") if m]
  repo = repo_root()
  against = _git(repo, "rev-parse", "--verify", f"{args.against}^{{commit}}")
  head = _git(repo, "rev-parse", "HEAD")
  dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
  timeout = getattr(args, "run_timeout", 3600)
  runs = {m: {s: [] for s in SIDES} for m in names}
  keep = getattr(args, "cache_dir", "")
  if keep:  # warm caches kept between invocations, one folder per side
    caches = {s: os.path.join(os.path.abspath(keep), s) for s in SIDES}
    for path in caches.values():
      os.makedirs(path, exist_ok=True)
    mode = (f"JAX_COMPILATION_CACHE_DIR {os.path.abspath(keep)}/{{current,against}}, "
            "one per side, kept between invocations (warm once filled)")
  else:
    caches = {s: tempfile.mkdtemp(prefix=f"s2gr_small_cache_{s}_") for s in SIDES}
    mode = ("one fresh JAX_COMPILATION_CACHE_DIR per side, shared by that side's runs "
            "(round 1 cold, later rounds warm)")
  try:
    with worktree(repo, against) as old:
      code = {"current": repo, "against": old}
      for r in range(args.rounds):
        for m in names:
          flags = config_args(m, args.data, args.steps, tiny=args.tiny, batch=args.batch)
          for side in SIDES:  # same flags on both sides, one after the other
            one = dict(run_one(code[side], flags, caches[side], timeout), round=r + 1)
            runs[m][side].append(one)
            shown = {k: one.get(k) for k in (
                "ok", "train_examples_per_s", "val_users_per_s", "compile_s_results",
                "compile_s_log", "wall_s")}
            print(f"round {r + 1} {m} {side}: {json.dumps(shown)}", flush=True)
            if not one["ok"]:
              print(one["stderr_tail"], file=sys.stderr, flush=True)
    cache_used = {s: bool(os.listdir(caches[s])) for s in SIDES}
  finally:
    for path in caches.values() if not keep else ():
      shutil.rmtree(path, ignore_errors=True)

  models = {}
  for m in names:
    source = set_compile_s(runs[m]["current"] + runs[m]["against"])
    sides = {s: summarise(runs[m][s]) for s in SIDES}
    cur, old = sides["current"], sides["against"]
    models[m] = {**sides, "compile_source": COMPILE_SOURCES[source],
                 "flags": config_args(m, args.data, args.steps, tiny=args.tiny,
                                      batch=args.batch),
                 "ratios": {k: _ratio(cur[k], old[k]) for k in (
                     "train_examples_per_s", "val_users_per_s", "compile_s", "wall_s")}}
  return {
      "data": args.data, "steps": args.steps, "rounds": args.rounds, "tiny": args.tiny,
      "code": {"current": {"dir": repo, "head": head, "uncommitted_changes": dirty},
               "against": {"rev": args.against, "commit": against,
                           "subject": _git(repo, "log", "-1", "--format=%s", against)}},
      "compilation_cache": {
          "mode": mode, "written": cache_used},
      "models": models,
  }


# --- the table --------------------------------------------------------------------------

def _num(x, fmt: str = "{:.0f}") -> str:
  return "—" if x is None else fmt.format(x)


def markdown(result: dict) -> str:
  code = result["code"]
  cur = code["current"]["head"][:10] + (" + uncommitted changes"
                                        if code["current"]["uncommitted_changes"] else "")
  old = f"{code['against']['rev']} = {code['against']['commit'][:10]}"
  lines = [f"device: {result['device']}, {result['date']}", "",
           f"{result['data']}, {result['steps']} steps, {result['rounds']} round(s), "
           f"medians over rounds; current: {cur}; against: {old} "
           f"({code['against']['subject']})", "",
           "| model | side | examples/s | val users/s | compile (s) | wall (s) | runs ok |",
           "|---|---|---|---|---|---|---|"]
  failures = []
  for name, m in result["models"].items():
    for side in SIDES:
      s = m[side]
      lines.append(f"| {name} | {side} | {_num(s['train_examples_per_s'])} | "
                   f"{_num(s['val_users_per_s'])} | {_num(s['compile_s'], '{:.1f}')} | "
                   f"{_num(s['wall_s'], '{:.1f}')} | {s['runs_ok']}/"
                   f"{s['runs_ok'] + s['runs_failed']} |")
      failures += [(name, side, r) for r in s["runs"] if not r["ok"]]
    r = m["ratios"]
    lines.append(f"| {name} | current / against | "
                 + " | ".join(_num(r[k], "{:.3f}") for k in (
                     "train_examples_per_s", "val_users_per_s", "compile_s", "wall_s"))
                 + " | |")
  cache = result["compilation_cache"]
  sources = sorted({m["compile_source"] for m in result["models"].values()})
  lines += ["", "- ratios: above 1 for examples/s and users/s, below 1 for seconds, "
            "mean the current code is faster",
            f"- compile (s): {'; '.join(sources)}; the same source on both sides",
            f"- compilation cache: {cache['mode']}; written: "
            + ", ".join(f"{s} {'yes' if w else 'no'}" for s, w in cache["written"].items())]
  for name, side, r in failures:
    lines += ["", f"{name} {side}, round {r['round']}: failed ({r['returncode']}); last "
              "lines of stderr:", "", "```", r["stderr_tail"].rstrip(), "```"]
  return "\n".join(lines)
