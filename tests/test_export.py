"""jax.export round trip: the serialized recommender reproduces the run's test metrics."""

import subprocess
import sys

import numpy as np

from s2gr_jax import export
from s2gr_jax import metrics
from s2gr_jax import run
from s2gr_jax.data import datasets
from s2gr_jax.data import pipeline
import test_run


def test_export_reload_reproduces_the_test_metrics(tmp_path):
  workdir = tmp_path / "run"
  config = test_run.tiny_config()
  results = run.run(config, str(workdir))
  out = tmp_path / "export"
  proc = subprocess.run([sys.executable, "-m", "s2gr_jax.export", "export", str(workdir),
                         "--out", str(out)], cwd=test_run.ROOT, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rec = export.Recommender(str(out))
  assert rec.meta["beam"] == 20 and rec.meta["max_history"] == 20
  # The test users, their histories and ids, as raw data: no project pipeline involved
  # in the call, only the exported function.
  ds = datasets.load_dataset(config.data)
  split = pipeline.LeaveOneOut.from_sequences(ds.sequences)
  histories = [s[:n - 1] for s, n in zip(ds.sequences, split.lengths)]
  targets = np.asarray([s[n - 1] for s, n in zip(ds.sequences, split.lengths)])
  items, scores = rec(histories, ds.user_ids)
  assert items.shape == (ds.num_users, 20) and (np.diff(scores, axis=1) <= 1e-6).all()
  sums = metrics.rank_metric_sums(items, targets, np.ones(len(targets)))
  got = metrics.finalize(sums)
  for key in ("recall@10", "ndcg@10", "recall@20"):
    assert abs(got[key] - results[f"test/{key}"]) < 1e-6
  # The command-line demo serves one history.
  proc = subprocess.run([sys.executable, "-m", "s2gr_jax.export", "recommend", str(out),
                         *map(str, histories[0][-5:]), "--user", str(ds.user_ids[0])],
                        cwd=test_run.ROOT, capture_output=True, text=True)
  assert proc.returncode == 0 and len(proc.stdout.strip().splitlines()) == 20
