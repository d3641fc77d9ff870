"""The ``peer`` benchmark suite without torch: our side for real on a tiny model, the
cornac side replaced by a stub (or its clear failure when cornac is missing)."""

import importlib.util
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from s2gr_jax.bench import cli
from s2gr_jax.bench import common
from s2gr_jax.bench import cornac_peer
from s2gr_jax.bench import peer

CORNAC = {  # what cornac_peer.py prints (figures made up, shapes real)
    "versions": {"python": "3.11", "torch": "2.13.0+cpu", "transformers": "5.23.0",
                 "cornac": "3.0.1", "numpy": "2"},
    "torch_threads": 2, "torch_interop_threads": 2, "params": 1000,
    "level_sizes": [256, 256, 256, 1], "total_items": 300, "train_sessions": 50,
    "train_step_s": 4.0, "train_step_times_s": [4.0], "train_warmup_step_s": 5.0,
    "train_examples_per_s": 2.0, "train_flops_per_step_counted": 8e9,
    "fit_setup_s": 1.0, "decode_user_s": 0.5, "decode_user_times_s": [0.5, 0.5],
    "decode_users_per_s": 2.0, "decode_users_per_s_mean": 2.0, "decode_users": 2,
    "decode_warmup_users": 2, "decode_items_scored_mean": 4.0,
    "torch_matmul_flops_per_s": 1e10, "total_s": 10.0,
}


def test_peer_suite_with_stub_cornac(tmp_path, monkeypatch):
  calls = []

  def stub(python, argv, timeout):
    calls.append(argv)
    if argv == ["--check"]:
      return {"versions": CORNAC["versions"]}
    spec = json.load(open(argv[1]))
    data = np.load(spec["data"])
    seqs, feats = data["sequences"], data["features"]
    # cornac must see our catalogue: every item among its training positions
    assert feats.shape[0] == 300
    assert set(np.unique(seqs[:, :-2])) == set(range(1, 301))
    assert seqs.shape[1] == spec["history"] + 3
    # enough training samples for the warm-up step + the timed ones, full batches
    assert seqs.shape[0] * spec["history"] >= (spec["train_steps"] + 1) * spec["batch"]
    assert spec["model"] == dict(common.MODEL_SIZES["tiny"], dropout=0.1)
    assert (spec["batch"], spec["beam"], spec["threads"]) == (8, 4, 2)
    return dict(CORNAC)

  monkeypatch.setattr(peer, "run_peer", stub)
  out = tmp_path / "peer.json"
  cli.main(["--suite", "peer", "--out", str(out), "--sizes", "tiny", "--items", "300",
            "--batch", "8", "--history", "4", "--eval-batch", "4", "--beam", "4",
            "--repeats", "1", "--peer-users", "2", "--peer-threads", "2",
            "--peak-n", "128", "--peer-python", "/nonexistent/python",
            "--dtypes", "float32,bfloat16"])
  assert [c[0] for c in calls] == ["--check", "--spec"]
  r = json.loads(out.read_text())
  ours, peak = r["ours"], r["machine_peak_flops_per_s"]
  assert ours["train_step_s"] > 0 and ours["train_flops_per_step"] > 0
  assert ours["decode_by_batch"]["1"]["decode_users_per_s"] > 0
  assert r["train_speedup_vs_cornac"] == pytest.approx(ours["train_examples_per_s"] / 2.0)
  assert r["decode_speedup_vs_cornac"] == pytest.approx(ours["decode_users_per_s"] / 2.0)
  assert r["decode_speedup_vs_cornac_batch1"] == pytest.approx(
      ours["decode_by_batch"]["1"]["decode_users_per_s"] / 2.0)
  assert r["machine_peak"]["matmul_n"] == 128 and peak > 0
  assert r["train_flops_fraction_of_peak"] == pytest.approx(
      ours["train_flops_per_step"] / ours["train_step_s"] / peak)
  assert r["cornac_train_counted_flops_fraction_of_peak"] == pytest.approx(8e9 / 4.0 / peak)
  assert r["threads"] == {"cpu_cores": 2, "torch": 2, "torch_interop": 2}
  assert isinstance(r["machine_busy_at_start"], bool)
  assert len(r["load_average_1_5_15min"]["start"]) == 3
  assert r["versions"]["cornac"]["cornac"] == "3.0.1"
  assert set(r["versions"]["ours"]) >= {"jax", "flax", "python"}
  low = r["by_dtype"]["bfloat16"]  # our model timed again in bf16, same cornac run
  assert list(r["by_dtype"]) == ["bfloat16"] and low["machine_peak"]["dtype"] == "bfloat16"
  assert r["machine_peak"]["dtype"] == "float32"
  assert low["train_speedup_vs_cornac"] == pytest.approx(
      low["ours"]["train_examples_per_s"] / 2.0)
  assert low["train_flops_fraction_of_peak"] == pytest.approx(
      low["ours"]["train_flops_per_s"] / low["machine_peak_flops_per_s"])
  assert low["train_flops_fraction_of_float32_peak"] == pytest.approx(
      low["ours"]["train_flops_per_s"] / peak)
  md = (tmp_path / "peer.md").read_text()
  assert "cornac 3.0.1 TIGER" in md and "train_speedup_vs_cornac" in md
  assert "our TIGER in bfloat16" in md


def test_unknown_dtype_is_refused_before_any_work(capsys):
  with pytest.raises(SystemExit):
    cli.main(["--suite", "peer", "--out", "/nonexistent/x.json", "--dtypes",
              "float32,float16"])
  assert "--dtypes takes float32 and/or bfloat16, got 'float16'" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("cornac") is not None,
                    reason="cornac is installed in this interpreter")
def test_missing_cornac_names_the_install_command():
  with pytest.raises(peer.PeerError) as e:
    peer.run_peer(sys.executable, ["--check"], 120)
  assert cornac_peer.INSTALL in str(e.value)
  assert "--peer-python" in str(e.value)
  with pytest.raises(peer.PeerError) as e:
    peer.run_peer("/nonexistent/python", ["--check"], 120)
  assert cornac_peer.INSTALL in str(e.value)


def test_run_peer_reads_the_last_json_line(tmp_path):
  fake = tmp_path / "python"  # a stand-in interpreter: noise, then the JSON line
  fake.write_text("#!/bin/sh\necho 'some library chatter'\necho '{\"ok\": 1}'\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  assert peer.run_peer(str(fake), ["--check"], 60) == {"ok": 1}
  fake.write_text("#!/bin/sh\necho 'Traceback: boom'\nexit 1\n")
  with pytest.raises(peer.PeerError, match="status 1 without a JSON result"):
    peer.run_peer(str(fake), ["--check"], 60)


def test_peer_data_rejects_a_catalogue_it_cannot_hold():
  table = common.synthetic_table(100)
  with pytest.raises(ValueError, match="cannot hold"):
    peer.peer_data(table, users=10, length=6)
  seqs, feats = peer.peer_data(table, users=30, length=6)
  assert seqs.min() >= 1 and seqs.max() <= 100 and feats.dtype == np.float32
  assert os.path.basename(cornac_peer.__file__) == "cornac_peer.py"


def test_device_peaks_match_the_most_specific_name():
  assert common.device_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
  assert common.device_bf16_peak("NVIDIA H100 PCIe") == 756e12
  assert common.device_bf16_peak("NVIDIA H200") == 989e12
  assert common.device_bf16_peak("TPU v5 lite") == 197e12
  assert common.device_bf16_peak("TPU v5") == 459e12
  assert common.device_bf16_peak("cpu") is None
  assert common.device_bf16_peak("Tesla T4") is None  # no bf16 tensor cores


def test_scaling_suite_over_eight_devices_reports_mfu(tmp_path):
  """Mesh layouts of 8 simulated devices run; FLOPs are counted per device (eight data
  shards each do a fraction of the work); MFU is FLOP/s per device over --peak-flops.
  (Tensor splits: tests/test_parallel.py; they are slow on simulated CPU devices.)"""
  out = tmp_path / "scaling.json"
  cli.main(["--suite", "scaling", "--out", str(out), "--sizes", "tiny", "--items", "300",
            "--batch", "16", "--eval-batch", "16", "--history", "5", "--repeats", "1",
            "--meshes", "1x1x1,8x1x1,4x2x1", "--peak-flops", "1e11"])
  result = json.loads(out.read_text())
  rows = result["rows"]
  assert [tuple(r["layout"].values()) for r in rows] == [(1, 1, 1), (8, 1, 1), (4, 2, 1)]
  one = rows[0]["train_flops_per_step"]
  # Not exactly 1/8: the replicated optimizer update is not split.
  assert one / 8 <= rows[1]["train_flops_per_step"] < one / 2
  for r in rows:
    assert r["mfu"] == pytest.approx(r["train_flops_per_s"] / 1e11)
  assert result["device_peak"]["source"] == "--peak-flops"
  md = (tmp_path / "scaling.md").read_text()
  assert "| MFU |" in md and f"{100 * rows[0]['mfu']:.1f} %" in md
  assert (tmp_path / "scaling.png").stat().st_size > 1000
  with pytest.raises(SystemExit, match="--meshes: 4x4x1 needs 16 devices, 8 available"):
    cli.main(["--suite", "scaling", "--out", str(out), "--meshes", "4x4x1"])


def test_small_suite_runs_the_entry_point_against_a_commit(tmp_path, monkeypatch):
  """The ``small`` suite end to end on the :tiny recipe: this checkout and a worktree
  of HEAD each run ``python -m s2gr_jax.main`` once; both give positive rates. The
  compilation caches are the tests' (warm after the first run: ~30 s, cold ~100 s)."""
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device per run: faster
  from s2gr_jax.bench import small  # pylint: disable=g-import-not-at-top
  if subprocess.run(["git", "rev-parse", "HEAD"], cwd=small.repo_root(),
                    capture_output=True).returncode != 0:
    pytest.skip("not a git checkout: the suite needs a commit to check out")
  out = tmp_path / "small.json"
  cli.main(["--suite", "small", "--out", str(out), "--against", "HEAD", "--rounds", "1",
            "--steps", "20", "--models", "tiger", "--tiny", "--cache-dir",
            os.path.join(os.environ["JAX_COMPILATION_CACHE_DIR"], "bench_small")])
  r = json.loads(out.read_text())
  m = r["models"]["tiger"]
  for side in ("current", "against"):
    s = m[side]
    assert s["runs_ok"] == 1, s["runs"]
    assert s["train_examples_per_s"] > 0 and s["val_users_per_s"] > 0
    assert s["compile_s"] > 0 and s["wall_s"] > 0
    run = s["runs"][0]
    assert run["train_steps_timed"] == 20 and run["batch"] == 32
  # the against side imported the worktree's package (its git commit is HEAD's)
  assert m["against"]["runs"][0]["git_commit"] == r["code"]["against"]["commit"]
  assert set(m["ratios"]) == {"train_examples_per_s", "val_users_per_s", "compile_s",
                              "wall_s"}
  assert all(v > 0 for v in m["ratios"].values())
  md = (tmp_path / "small.md").read_text()
  assert "| tiger | current / against |" in md
  assert "compilation cache" in md


def test_small_suite_reports_a_failed_run_with_its_stderr(tmp_path):
  from s2gr_jax.bench import small  # pylint: disable=g-import-not-at-top
  one = small.run_one(small.repo_root(), ["--config=configs/default.py:tiny",
                                          "--config.train.no_such_flag=1"],
                      str(tmp_path / "cache"), timeout=120)
  assert not one["ok"] and one["returncode"] != 0
  assert "no_such_flag" in one["stderr_tail"]


def test_rl_suite_times_the_grpo_step_against_the_sft_step(tmp_path):
  out = tmp_path / "rl.json"
  cli.main(["--suite", "rl", "--out", str(out), "--items", "200", "--batch", "4",
            "--history", "3", "--group", "4", "--updates", "1", "--repeats", "1"])
  result = json.loads(out.read_text())
  assert set(result["models"]) == {"tiger", "s2gr", "reg4rec"}
  for m in result["models"].values():
    assert m["rl_step_s"] > 0 and m["sft_step_s"] > 0
    assert m["rl_over_sft_per_user"] == pytest.approx(m["rl_step_s"] / m["sft_step_s"])
  assert "GRPO / SFT per user" in (tmp_path / "rl.md").read_text()


def test_lm_suite_times_prompt_decode_and_training_of_the_tiny_gemma(tmp_path):
  out = tmp_path / "lm.json"
  cli.main(["--suite", "lm", "--lm", "tiny", "--out", str(out), "--batch", "2",
            "--seq-len", "16", "--decode-tokens", "4", "--repeats", "1", "--lora-rank",
            "2"])
  m = json.loads(out.read_text())["lm"]
  assert m["prompt"]["tokens_per_s"] == pytest.approx(2 * 16 / m["prompt"]["s"])
  assert m["decode"]["tokens_per_s"] == pytest.approx(2 / m["decode"]["step_s"])
  # LoRA trains the adapters only: far fewer parameters than full fine-tuning.
  assert m["train_lora"]["trainable_params"] < m["train_full"]["trainable_params"] == \
      m["params"]
  assert "SFT step, LoRA rank 2" in (tmp_path / "lm.md").read_text()
