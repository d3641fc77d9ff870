"""End to end through the real recipe and entry point: outputs, resume, determinism,
NaN stop, 1 vs 8 devices, config errors, and Amazon Beauty."""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from s2gr_jax import config_lib
from s2gr_jax import metric_writer
from s2gr_jax import run
from s2gr_jax import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "configs"))
import default as default_recipe  # pylint: disable=g-import-not-at-top,wrong-import-position

# One length bucket keeps compilation (the dominant cost on CPU) to one shape.
TINY = ["--config.data.length_buckets=(20,)"]


def tiny_config(**overrides):
  c = default_recipe.get_config("tiny")
  c.data.length_buckets = (20,)
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def main(*args, env=None, check=True):
  proc = subprocess.run([sys.executable, "-m", "s2gr_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, env={**os.environ, **(env or {})})
  if check and proc.returncode != 0:
    raise AssertionError(f"entry point failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc


def train_losses(workdir):
  return {r["step"]: r["train/loss"] for r in metric_writer.read_metrics(workdir)
          if "train/loss" in r}


def last_params(workdir):
  """The model parameters of the newest checkpoint in ``workdir/checkpoints/last``."""
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints", "last"))
  step = mngr.latest_step()
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  mngr.close()
  return step, jax.tree.leaves(restored["state"])


def test_entry_point_writes_the_output_contract(tmp_path):
  workdir = tmp_path / "w"
  proc = main("--config", "configs/default.py:tiny", "--workdir", str(workdir), *TINY)
  for name in ("config.json", "environment.json", "metrics.jsonl", "results.json",
               "results.md", "sid/sid_table.npz", "sid/codebook_stats.json"):
    assert (workdir / name).exists(), name
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert (workdir / "checkpoints" / "last" / "40").exists()
  assert list((workdir / "checkpoints" / "best").iterdir())
  results = json.loads((workdir / "results.json").read_text())
  for split in ("val", "test"):
    for k in (1, 5, 10, 20):
      for m in ("recall", "ndcg"):
        assert 0.0 <= results[f"{split}/{m}@{k}"] <= 1.0
        for base in ("popularity", "last_item", "history_transitions"):
          assert 0.0 <= results[f"baselines/{base}/{split}/{m}@{k}"] <= 1.0
  assert results["train/steps"] == 40 and results["train/wall_s"] > 0
  # Wall time split: compilation and validation are parts of it, the steps the rest.
  assert results["train/compile_s"] > 0 and results["train/eval_s"] > 0
  assert results["train/step_s"] > 0 and results["eval/compile_s"] >= 0
  assert results["train/compile_s"] + results["train/eval_s"] < results["train/wall_s"]
  examples = int(re.search(r"Training examples: (\d+)", proc.stdout + proc.stderr)[1])
  assert results["train/epochs"] == pytest.approx(40 * 32 / examples)
  assert results["data/num_users"] == 300
  config = json.loads((workdir / "config.json").read_text())
  assert config["train"]["num_steps"] == 40 and config["data"]["length_buckets"] == [20]
  stats = json.loads((workdir / "sid" / "codebook_stats.json").read_text())
  assert len(stats["utilization"]) == 3 and 0 <= stats["collision_rate"] <= 1
  lines = metric_writer.read_metrics(str(workdir))
  assert [r["step"] for r in lines if "train/loss" in r] == [10, 20, 30, 40]
  assert [r["step"] for r in lines if "val/ndcg@10" in r] == [20, 40]
  out = proc.stdout
  assert "Compiling the train step" in out and "ETA" in out and "ex/s" in out
  assert "| popularity |" in out and "| last_item |" in out and "| tiger |" in out
  assert "| history_transitions |" in out


def test_config_typos_and_bad_values_fail_clearly(tmp_path):
  proc = main("--config", "configs/default.py:tiny", "--workdir", str(tmp_path / "a"),
              "--config.train.num_stepz=5", check=False)
  assert proc.returncode != 0 and "num_stepz" in proc.stderr
  assert "num_steps" in proc.stderr  # "Did you mean ..."
  proc = main("--config", "configs/default.py:tiny", "--workdir", str(tmp_path / "b"),
              "--config.eval.beam_size=5", check=False)
  assert proc.returncode != 0 and "config.eval.beam_size=5 must be at least" in proc.stderr
  proc = main("--config", "configs/default.py:huge", "--workdir", str(tmp_path / "c"),
              check=False)
  assert proc.returncode != 0 and "unknown preset ':huge'" in proc.stderr
  # Unsupported URLs are refused up front, before anything is written (gs:// workdirs:
  # test_gcs.py).
  with pytest.raises(ValueError, match="workdir='s3://b/r': only local paths and gs://"):
    run.run(tiny_config(), "s3://b/r")
  with pytest.raises(ValueError, match="config.data.dir='gs://b/d': datasets are read "
                     "from local paths"):
    run.run(tiny_config(**{"data.dir": "gs://b/d"}), str(tmp_path / "d"))
  assert not (tmp_path / "d").exists()


def test_resume_after_interruption_gives_the_same_run(tmp_path):
  full, split = str(tmp_path / "full"), str(tmp_path / "split")
  reference = run.run(tiny_config(), full)
  assert run.run(tiny_config(**{"train.stop_at_step": 20}), split) == {}
  assert last_params(split)[0] == 20
  resumed = run.run(tiny_config(), split)  # the same command again: resumes at 20
  assert train_losses(split) == train_losses(full)
  step_a, params_a = last_params(full)
  step_b, params_b = last_params(split)
  assert step_a == step_b == 40
  for a, b in zip(params_a, params_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for key in ("test/recall@10", "test/ndcg@10", "val/ndcg@10"):
    assert resumed[key] == reference[key]
  # A finished run re-evaluates from its best checkpoint without training again.
  again = run.run(tiny_config(), split)
  assert again["test/ndcg@10"] == reference["test/ndcg@10"]
  assert train_losses(split) == train_losses(full)


def test_two_runs_with_one_seed_match_and_seeds_differ(tmp_path):
  a = run.run(tiny_config(**{"train.num_steps": 20, "train.eval_every": 20}),
              str(tmp_path / "a"))
  b = run.run(tiny_config(**{"train.num_steps": 20, "train.eval_every": 20}),
              str(tmp_path / "b"))
  c = run.run(tiny_config(**{"train.num_steps": 20, "train.eval_every": 20, "seed": 1}),
              str(tmp_path / "c"))
  assert train_losses(str(tmp_path / "a")) == train_losses(str(tmp_path / "b"))
  assert a["test/ndcg@10"] == b["test/ndcg@10"]
  assert train_losses(str(tmp_path / "a")) != train_losses(str(tmp_path / "c"))
  # The report groups runs that differ only in their seed: one row, mean ± s.e.
  from s2gr_jax import report  # pylint: disable=g-import-not-at-top
  text = report.write_report([str(tmp_path / n) for n in "abc"], str(tmp_path / "rep"))
  row = next(l for l in text.splitlines() if "| tiger · rqkmeans | 3 |" in l)
  values = [a["test/ndcg@10"], b["test/ndcg@10"], c["test/ndcg@10"]]
  mean, se = report.mean_se(values)
  assert f"{mean:.4f} ± {se:.4f}" in row
  assert "| last_item |" in text and "| popularity |" in text
  for png in ("curves.png", "codebooks.png", "by_history.png"):
    assert (tmp_path / "rep" / png).stat().st_size > 1000


def test_one_and_eight_devices_train_alike(tmp_path):
  assert jax.device_count() == 8
  cfg = dict(**{"train.num_steps": 20, "train.eval_every": 20, "model.tiger.dropout": 0.0})
  one = run.run(tiny_config(**cfg, **{"mesh.data": 1}), str(tmp_path / "one"))
  eight = run.run(tiny_config(**cfg, **{"mesh.data": 8}), str(tmp_path / "eight"))
  l1, l8 = train_losses(str(tmp_path / "one")), train_losses(str(tmp_path / "eight"))
  for step in l1:
    assert l8[step] == pytest.approx(l1[step], rel=1e-5)
  assert eight["test/recall@10"] == pytest.approx(one["test/recall@10"], abs=1e-6)


def test_nan_loss_stops_with_a_clear_message(tmp_path):
  with pytest.raises(train.NonFiniteLossError, match="non-finite training loss at step"):
    run.run(tiny_config(**{"train.lr": 1e30, "train.grad_clip": 1e30}),
            str(tmp_path / "nan"))


def test_tiger_beauty_tiny_through_the_entry_point(tmp_path):
  workdir = tmp_path / "beauty"
  main("--config", "configs/tiger_beauty.py:tiny", "--workdir", str(workdir),
       "--config.data.length_buckets=(20,)", "--config.train.num_steps=30",
       "--config.train.warmup_steps=10", "--config.train.eval_every=30",
       "--config.train.log_every=10",
       "--config.eval.val_users=500")
  results = json.loads((workdir / "results.json").read_text())
  assert results["data/num_users"] == 22363 and results["data/num_items"] == 12101
  assert results["eval/beam_size"] == 20
  # The floor of SPEC §0, measured in the same evaluation.
  assert 0.06 < results["baselines/last_item/test/recall@10"] < 0.08
  assert results["test/recall@10"] >= 0.0


def test_every_recipe_and_preset_validates():
  import importlib.util  # pylint: disable=g-import-not-at-top
  from s2gr_jax import config_lib  # pylint: disable=g-import-not-at-top
  recipes = sorted((ROOT / "configs").glob("*.py"))
  assert len(recipes) >= 8
  for path in recipes:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "Command" in module.__doc__, path  # every recipe says how to run it
    for arg in (None, "cpu", "tiny"):
      try:
        config = module.get_config(arg)
      except ValueError as e:
        assert "unknown preset" in str(e)
        continue
      config_lib.validate(config)


@pytest.mark.parametrize("model", ["s2gr", "sasrec"])
def test_other_models_through_the_entry_point(tmp_path, model):
  workdir = tmp_path / model
  proc = main("--config", "configs/default.py:tiny", "--workdir", str(workdir), *TINY,
              f"--config.model.name={model}", "--config.train.num_steps=20",
              "--config.train.eval_every=20", "--config.model.s2gr.num_clusters=4",
              "--config.model.s2gr.anchor_layers=1")
  results = json.loads((workdir / "results.json").read_text())
  assert 0.0 <= results["test/ndcg@10"] <= 1.0 and results["train/steps"] == 20
  assert f"| {model} |" in proc.stdout
  losses = [r for r in metric_writer.read_metrics(str(workdir)) if "train/loss" in r]
  if model == "s2gr":  # every loss part is logged on its own
    assert {"train/rec", "train/align", "train/nce", "train/reg"} <= set(losses[-1])


def test_converge_presets_early_stop_on_validation(tmp_path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  for path in sorted((ROOT / "configs").glob("*_*.py")):
    if path.stem.startswith(("tokenize", "sidreasoner")):  # (no SID-generator training)
      continue
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("converge")
    assert c.train.patience > 0 and c.eval.select_metric == "ndcg@10", path.stem
    assert c.train.num_steps >= 5 * c.train.eval_every, path.stem
    if path.stem.startswith("sasrec"):  # no SIDs to roll out
      with pytest.raises(ValueError, match="unknown preset ':converge_grpo'"):
        module.get_config("converge_grpo")
    else:  # GRPO on exactly the targets the supervised stage held out
      g = config_lib.resolve(module.get_config("converge_grpo"))
      config_lib.validate(g)
      assert g.train.hold_out_last and g.rl.enabled and g.rl.examples == "last", path.stem
      assert g.train.num_steps == c.train.num_steps and g.rl.sft_weight > 0, path.stem
  # The loop stops once validation has not improved for `patience` validations: with
  # a learning rate too small to change the ranking, the first validation stays best.
  results = run.run(tiny_config(**{"train.lr": 1e-12, "train.num_steps": 100,
                                   "train.eval_every": 5, "train.checkpoint_every": 5,
                                   "train.patience": 2, "train.warmup_steps": 1}),
                    str(tmp_path / "stop"))
  assert results["train/stopped_early"] is True
  assert results["train/steps"] == 15 and results["train/best_step"] == 5
  val_steps = [r["step"] for r in metric_writer.read_metrics(str(tmp_path / "stop"))
               if "val/ndcg@10" in r]
  assert val_steps == [5, 10, 15]


def test_quick_start_table_through_the_entry_point(tmp_path):
  """The default recipe (S²GR) as the quick start runs it, shrunk in data and steps:
  its results table has the model's row and every non-learned row, for test and
  validation, with every metric column."""
  workdir = tmp_path / "quick"
  proc = main("--config", "configs/default.py", "--workdir", str(workdir), *TINY,
              "--config.data.synthetic.num_users=300",
              "--config.data.synthetic.num_items=200",
              "--config.tokenizer.codebook_size=16", "--config.train.num_steps=20",
              "--config.train.warmup_steps=5", "--config.train.eval_every=20",
              "--config.train.log_every=10", "--config.model.s2gr.num_clusters=4")
  text = (workdir / "results.md").read_text()
  assert text.startswith("Test (synthetic") and "\n\nValidation (synthetic" in text
  for table in text.split("\n\nValidation")[:2]:
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == ("| model | R@1 | N@1 | R@5 | N@5 | R@10 | N@10 | R@20 | N@20 |")
    names = [r.split(" | ")[0][2:] for r in rows[1:]]
    assert names == ["s2gr", "popularity", "last_item", "history_transitions"]
    for r in rows[1:]:
      cells = [float(c) for c in r.strip("| ").split(" | ")[1:]]
      assert len(cells) == 8 and all(0.0 <= c <= 1.0 for c in cells)
  assert "| s2gr |" in proc.stdout and "| history_transitions |" in proc.stdout


def test_a_rerun_with_another_config_says_what_changed(tmp_path, caplog):
  workdir = str(tmp_path / "w")
  run.run(tiny_config(stages="tokenize"), workdir)
  assert not (tmp_path / "w" / "config.previous.json").exists()
  # Only how the run is driven changed (a pause step): nothing to report.
  with caplog.at_level("WARNING", logger="s2gr_jax.run"):
    run.run(tiny_config(stages="tokenize", **{"train.stop_at_step": 5}), workdir)
  assert "written by another config" not in caplog.text
  assert not (tmp_path / "w" / "config.previous.json").exists()
  caplog.clear()
  with caplog.at_level("WARNING", logger="s2gr_jax.run"):
    run.run(tiny_config(stages="tokenize", **{"train.num_steps": 77}), workdir)
  assert "written by another config" in caplog.text
  assert "train.num_steps: 40 vs 77" in caplog.text
  previous = json.loads((tmp_path / "w" / "config.previous.json").read_text())
  assert previous["train"]["num_steps"] == 40
  assert json.loads((tmp_path / "w" / "config.json").read_text())["train"]["num_steps"] == 77


def test_final_evaluation_of_test_only(tmp_path):
  results = run.run(tiny_config(**{"eval.final_val": False, "train.num_steps": 20}),
                    str(tmp_path / "w"))
  assert "test/ndcg@10" in results and "baselines/last_item/test/ndcg@10" in results
  assert not any(k.startswith(("val/", "val_by_history/")) for k in results)
  assert results["eval/final_val"] is False
  # the training loop still validated (its subset) and chose the best checkpoint on it
  assert any("val/ndcg@10" in r for r in metric_writer.read_metrics(str(tmp_path / "w")))
  with pytest.raises(ValueError, match="nothing to score"):
    run.run(tiny_config(**{"eval.final_val": False, "eval.test": False}),
            str(tmp_path / "x"))
