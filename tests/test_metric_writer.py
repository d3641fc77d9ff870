"""metrics.jsonl, and the optional W&B logging (a stand-in module records the calls)."""

import sys
import types

import ml_collections
import pytest

from s2gr_jax import config_lib
from s2gr_jax import metric_writer


class _FakeRun:

  def __init__(self, calls, kwargs):
    self.calls = calls
    calls.append(("init", kwargs))

  def log(self, data, step):
    self.calls.append(("log", step, dict(data)))

  def finish(self):
    self.calls.append(("finish",))


def _fake_wandb(calls):
  module = types.ModuleType("wandb")
  module.init = lambda **kwargs: _FakeRun(calls, kwargs)
  return module


def test_wandb_off_never_imports(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
  writer = metric_writer.MetricWriter(str(tmp_path), config_lib.base_config().wandb)
  writer.write(1, {"train/loss": 2.0})
  writer.close()
  assert calls == []
  assert metric_writer.read_metrics(str(tmp_path)) == [{"step": 1, "train/loss": 2.0}]


def test_wandb_logs_finite_scalars_and_resumes_same_run(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
  options = config_lib.base_config().wandb
  options.enabled = True
  options.mode = "offline"
  writer = metric_writer.MetricWriter(str(tmp_path), options, {"seed": 3})
  writer.write(5, {"train/loss": 1.5, "bad": float("nan"), "hist": [1, 2]})
  writer.close()
  init = calls[0][1]
  assert init["config"] == {"seed": 3} and init["mode"] == "offline"
  assert init["resume"] == "allow" and init["name"] == tmp_path.name
  assert calls[1:] == [("log", 5, {"train/loss": 1.5}), ("finish",)]
  # A resumed job continues the same W&B run.
  metric_writer.MetricWriter(str(tmp_path), options).close()
  assert calls[3][1]["id"] == init["id"]


def test_wandb_missing_package_is_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
  options = ml_collections.ConfigDict(config_lib.base_config().wandb.to_dict())
  options.enabled = True
  with pytest.raises(ImportError, match=r"s2gr_jax\[wandb\]"):
    metric_writer.MetricWriter(str(tmp_path), options)


def test_wandb_mode_is_validated():
  config = config_lib.base_config()
  config.wandb.mode = "onlin"
  with pytest.raises(ValueError, match="wandb.mode"):
    config_lib.validate(config)
