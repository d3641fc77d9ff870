"""``python -m s2gr_jax.tune``: the search sees validation only, the finals measure test
over the seeds (the seed of the trials from the best trial's checkpoint), reruns resume,
mistakes in the space fail clearly."""

import json
import math
import os
import pathlib
import subprocess
import sys
import time

import pytest

from s2gr_jax import baselines
from s2gr_jax import tune

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "configs"))
import default as default_recipe  # pylint: disable=g-import-not-at-top,wrong-import-position

# The tiny recipe, one length bucket (one compiled shape), 20 steps, one validation.
TINY = ["--config", "configs/default.py:tiny", "--config.data.length_buckets=(20,)",
        "--config.train.num_steps=20", "--config.train.eval_every=20",
        "--config.train.log_every=10", "--config.train.checkpoint_every=20"]
SEARCH = [*TINY, "--space", "train.lr=float:1e-3:1e-2:log", "--trials", "2",
          "--seeds", "0,1"]


def run_tune(*args, check=True):
  proc = subprocess.run([sys.executable, "-m", "s2gr_jax.tune", *args], cwd=ROOT,
                        capture_output=True, text=True)
  if check and proc.returncode != 0:
    raise AssertionError(f"tune failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc


def read(path):
  return json.loads(pathlib.Path(path).read_text())


def test_search_on_validation_then_test_over_the_seeds(tmp_path):
  workdir = tmp_path / "tune"
  t0 = time.time()
  proc = run_tune(*SEARCH, "--workdir", str(workdir))
  first_s = time.time() - t0
  summary = read(workdir / "tune.json")
  trials = summary["trials"]
  assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]
  assert trials[0]["params"] != trials[1]["params"]
  assert all(math.isfinite(t["value"]) for t in trials)
  assert summary["trials_budget"] == 2 and summary["sampler"]["seed"] == 0
  assert summary["space"][0]["key"] == "train.lr" and summary["seeds"] == [0, 1]

  # The search saw validation only, on one shared SID table, with the first seed.
  for t in trials:
    results = read(pathlib.Path(t["workdir"]) / "results.json")
    assert not [k for k in results if k.startswith("test/")], t["workdir"]
    assert results["val/ndcg@10"] == t["value"]
    config = read(pathlib.Path(t["workdir"]) / "config.json")
    assert config["eval"]["test"] is False and config["seed"] == 0
    assert config["tokenizer"]["from_workdir"] == str(workdir / "sids")
    assert config["train"]["lr"] == t["params"]["train.lr"]

  # The chosen config, once per seed, with test; seed 0 is the best trial's checkpoint.
  best = max(trials, key=lambda t: t["value"])
  assert summary["best_trial"] == best["number"]
  assert summary["chosen_params"] == best["params"]
  finals = {s: read(workdir / "final" / f"seed_{s}" / "results.json") for s in (0, 1)}
  for results in finals.values():
    assert 0.0 <= results["test/ndcg@10"] <= 1.0
  assert finals[0]["init/from_workdir"] == best["workdir"]
  assert finals[0]["val/ndcg@10"] == best["value"]
  assert finals[0]["train/steps"] == 0  # evaluated, not retrained
  assert "init/from_workdir" not in finals[1] and finals[1]["train/steps"] == 20
  config_1 = read(workdir / "final" / "seed_1" / "config.json")
  assert config_1["seed"] == 1 and config_1["train"]["lr"] == best["params"]["train.lr"]

  # The table: mean ± s.e. over the seeds, beside the baselines; printed at the end too.
  mean, se = summary["table"]["test"]["model"]["ndcg@10"]
  assert mean == pytest.approx((finals[0]["test/ndcg@10"] + finals[1]["test/ndcg@10"]) / 2)
  md = (workdir / "tune.md").read_text()
  row = next(l for l in md.splitlines() if l.startswith("| tiger (tuned, 2 trials) | 2 |"))
  assert f"{mean:.4f} ± {se:.4f}" in row
  for name in baselines.NAMES:
    assert f"| {name} | – |" in md
    assert summary["table"]["test"][name]["recall@10"][0] == pytest.approx(
        finals[0][f"baselines/{name}/test/recall@10"])
  assert "## Trials" in md and "Chosen: trial" in md
  assert "| tiger (tuned, 2 trials) | 2 |" in proc.stdout

  # The same command again: no new trial, the finals reused.
  t0 = time.time()
  proc = run_tune(*SEARCH, "--workdir", str(workdir))
  again_s = time.time() - t0
  again = read(workdir / "tune.json")
  assert len(again["trials"]) == 2 and again["best_trial"] == best["number"]
  assert "Trial 2" not in proc.stdout and "done already" in proc.stdout
  assert again["table"] == summary["table"]
  assert again_s < first_s / 2, (again_s, first_s)


def test_a_bad_space_fails_naming_it(tmp_path):
  workdir = tmp_path / "bad"
  proc = run_tune(*TINY, "--workdir", str(workdir), "--trials", "2",
                  "--space", "train.lrr=float:1e-3:1e-2", check=False)
  assert proc.returncode != 0
  assert "train.lrr" in proc.stderr and "did you mean 'train.lr'" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()


def test_space_specs_take_the_field_types():
  config = default_recipe.get_config("tiny")
  dims = tune.parse_space(["train.lr=float:1e-4:1e-2:log", "train.batch_size=int:16:64",
                           "model.s2gr.num_clusters=choice:4,8"], config)
  assert [(d.kind, d.log) for d in dims] == [("float", True), ("int", False),
                                             ("choice", False)]
  assert dims[1].low == 16 and isinstance(dims[1].low, int)
  assert dims[2].choices == (4, 8) and all(isinstance(c, int) for c in dims[2].choices)
  (flag,) = tune.parse_space(["train.progress_bar=choice:true,false"], config)
  assert flag.choices == (True, False)
  (ints_on_float,) = tune.parse_space(["train.weight_decay=int:0:1"], config)
  assert isinstance(ints_on_float.low, float)
  for spec, message in [
      ("train.lr", "expected KEY=float"),
      ("train.lr=uniform:1:2", "expected KEY=float"),
      ("train.lr=float:1e-3", "float:LO:HI or float:LO:HI:log"),
      ("train.lr=float:1e-2:1e-3", "LO must be below HI"),
      ("train.lr=float:0:1e-3:log", "log scale needs LO > 0"),
      ("train.lr=float:a:1", "'a' is not a number"),
      ("train.batch_size=float:16:64", "is an int"),
      ("train.batch_size=int:16:64.5", "not an integer"),
      ("model.tiger.dropout=float:0:1.5", "must be in [0, 1)"),
      ("model.tiger=float:0:1", "is a section"),
      ("model.tiger.dropot=float:0:0.3", "did you mean 'model.tiger.dropout'"),
      ("seed=int:0:3", "cannot be searched"),
      ("eval.test=choice:true,false", "cannot be searched"),
      ("data.length_buckets=choice:1,2", "only numbers, bools and strings"),
  ]:
    with pytest.raises(tune.SearchError) as e:
      tune.parse_space([spec], config)
    assert spec in str(e.value) and message in str(e.value), (spec, str(e.value))
  with pytest.raises(tune.SearchError, match="given twice"):
    tune.parse_space(["train.lr=float:1e-3:1e-2", "train.lr=float:1e-3:1e-2"], config)


def test_a_trial_left_running_is_failed_and_queued_again(tmp_path):
  """What a rerun does after ``kill -9`` during a trial (without running one)."""
  from optuna.trial import TrialState  # pylint: disable=g-import-not-at-top
  identity = {"space": [], "trial_seed": 0, "search_seed": 0, "objective": "val/ndcg@10",
              "config": {"train": {"lr": 1.0}}}
  os.makedirs(tmp_path / "w")
  study = tune.open_study(str(tmp_path / "w"), identity)
  done = study.ask()
  done.suggest_float("train.lr", 1e-3, 1e-2)
  study.tell(done, 0.5)
  left = study.ask()
  lr = left.suggest_float("train.lr", 1e-3, 1e-2)  # ... and the process is killed here

  study = tune.open_study(str(tmp_path / "w"), identity)  # the rerun
  tune.requeue_unfinished(study)
  tune.requeue_unfinished(study)  # queued once, however often the command is rerun
  states = [t.state for t in study.get_trials()]
  assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
  assert sum(tune.counted(t) for t in study.get_trials()) == 1
  retry = study.ask()
  assert retry.suggest_float("train.lr", 1e-3, 1e-2) == lr  # the same params: same dir
  assert retry.user_attrs["retry_of"] == left.number

  with pytest.raises(tune.SearchError, match="belongs to another search"):
    tune.open_study(str(tmp_path / "w"), dict(identity, search_seed=1))
