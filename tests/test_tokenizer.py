"""The S²GR tokenizer: co-occurrence graph, propagation, RQ-VAE and CoBa's objectives."""

import json
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from s2gr_jax.sid import diagnostics
from s2gr_jax.sid import embeddings
from s2gr_jax.sid import graph as graph_lib
from s2gr_jax.sid import clustering
from s2gr_jax.sid import rqvae


def test_cooccurrence_on_a_hand_made_history():
  a = graph_lib.cooccurrence([np.array([1, 2, 3]), np.array([2, 3]), np.array([4, 1])],
                             num_items=5, window=2).toarray()
  expected = np.zeros((5, 5))
  for i, j, w in ((0, 1, 1), (1, 2, 2), (0, 2, 1), (3, 0, 1)):  # ids - 1
    expected[i, j] += w
    expected[j, i] += w
  np.testing.assert_array_equal(a, expected)
  # Window 1 keeps neighbours only.
  a1 = graph_lib.cooccurrence([np.array([1, 2, 3])], 3, window=1).toarray()
  assert a1[0, 2] == 0 and a1[0, 1] == 1


def test_propagation_matches_a_dense_reference():
  rng = np.random.default_rng(0)
  a = graph_lib.cooccurrence([rng.permutation(np.arange(1, 9))[:5] for _ in range(20)], 8)
  x = rng.normal(size=(8, 3))
  a_hat = graph_lib.normalized_adjacency(a)
  dense = a.toarray() + np.eye(8)
  d = 1 / np.sqrt(dense.sum(1))
  np.testing.assert_allclose(a_hat.toarray(), d[:, None] * dense * d[None], rtol=1e-12)
  alpha, hops = 0.2, 2
  h, hs = x, [x]
  for _ in range(hops):
    h = (1 - alpha) * (d[:, None] * dense * d[None]) @ h + alpha * x
    hs.append(h)
  beta = np.array([alpha * (1 - alpha) ** k for k in range(hops + 1)])
  expected = sum(b * hk for b, hk in zip(beta / beta.sum(), hs))
  np.testing.assert_allclose(graph_lib.propagate(x, a_hat, alpha, hops), expected,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(graph_lib.propagate(x, a_hat, alpha, 0), x, rtol=1e-6)


def test_empty_graph_and_bad_settings():
  with pytest.raises(ValueError, match="co-occurrence graph is empty"):
    graph_lib.cooccurrence([np.array([1]), np.array([2])], 3)
  with pytest.raises(ValueError, match="alpha must be in"):
    graph_lib.propagate(np.ones((2, 2)), sp.identity(2), 0.0, 1)
  with pytest.raises(ValueError, match="needs the co-occurrence graph"):
    rqvae.RQVAE(codebook_size=4, propagation_hops=2, steps=1).fit(np.ones((10, 3)))
  with pytest.raises(ValueError, match="3 items are fewer than tokenizer.codebook_size=4"):
    rqvae.RQVAE(codebook_size=4, steps=1).fit(np.ones((3, 3)))


def _small(**kw):
  settings = dict(levels=2, codebook_size=8, latent_dim=4, hidden=(16,), steps=150,
                  batch_size=128, lr=3e-3, kmeans_iters=10, log_every=50, seed=0)
  settings.update(kw)
  return rqvae.RQVAE(**settings)


def _skewed_data(n=600, seed=0):
  """One dense blob holding most items, a few small ones: usage skews without help."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(6, 8)) * 4
  sizes = [n - 5 * (n // 30)] + [n // 30] * 5
  return np.concatenate([c + rng.normal(size=(s, 8)) * 0.3
                         for c, s in zip(centres, sizes)]).astype(np.float32)


def test_rqvae_trains_and_reports():
  q = _small().fit(_skewed_data())
  assert q.codes.shape == (600, 2) and q.codes.max() < 8
  h = q.history
  assert h["step"] == [50, 100, 150]
  assert h["recon_mse"][-1] < h["recon_mse"][0]  # it learns to reconstruct
  assert len(h["utilization"][-1]) == 2 and 0 < h["final_recon_mse"]


def test_load_balancing_evens_out_usage():
  x = _skewed_data()
  plain = diagnostics.code_stats(_small().fit(x).codes, 8)
  balanced = diagnostics.code_stats(_small(balance_gamma=1.0, balance_eps=0.5).fit(x).codes, 8)
  assert balanced["perplexity"][0] > plain["perplexity"][0] + 0.5


def test_uniformity_gradient_pushes_close_codes_apart():
  q = _small(uniformity_weight=1.0)
  model = rqvae.RQVAEModel(8, (16,), 4, 2, 8, rngs=nnx.Rngs(0))
  cb = np.asarray(jax.random.normal(jax.random.key(0), (2, 8, 4))) * 3
  cb[0, 1] = cb[0, 0] + 0.01  # two codes of level 0 nearly on top of each other
  model.codebooks[...] = jnp.asarray(cb)
  model.min_distance[...] = jnp.array([1.0, 1.0])
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8)), jnp.float32)

  def uniformity(m):
    return q._loss(m, x)[1][0]["uniformity"]

  grads = nnx.grad(uniformity)(model)
  g = np.asarray(grads.codebooks[...])
  apart = cb[0, 0] - cb[0, 1]
  # A gradient step (−g) moves code 0 away from code 1 and code 1 away from code 0.
  assert (-g[0, 0]) @ apart > 0 and (-g[0, 1]) @ (-apart) > 0
  assert float(uniformity(model)) > 0


def test_dead_codes_restart_on_current_residuals():
  q = _small(restart_every=1, restart_threshold=10.0, steps=1, usage_decay=0.5)
  x = _skewed_data()
  model = rqvae.RQVAEModel(8, (16,), 4, 2, 8, rngs=nnx.Rngs(0))
  q._init_codebooks(model, q._prepare_input(x, None), jax.random.key(0))
  import optax  # pylint: disable=g-import-not-at-top
  opt = nnx.Optimizer(model, optax.adam(0.0), wrt=nnx.Param)  # lr 0: only restarts move
  graphdef, state = nnx.split((model, opt))
  step = q._make_step(graphdef, None)
  xb = jnp.asarray(x[:64])
  before = np.asarray(model.codebooks[...])
  state, parts = step(state, xb, jax.random.key(1), jnp.asarray(True))
  assert int(parts["restarted"]) == 16  # threshold 10× mean: every code is "dead"
  after = np.asarray(nnx.merge(graphdef, state)[0].codebooks[...])
  assert not np.allclose(before, after)
  # Each restarted level-0 code now sits exactly on an encoded item of the batch.
  z = np.asarray(nnx.merge(graphdef, state)[0].encode(xb))
  for code in after[0]:
    assert np.abs(z - code).max(1).min() < 1e-5
  _, parts = step(state, xb, jax.random.key(1), jnp.asarray(False))
  assert int(parts["restarted"]) == 0  # not a restart step


def test_sinkhorn_spreads_items_over_codes():
  rng = np.random.default_rng(0)
  codebook = rng.normal(size=(8, 4)).astype(np.float32)
  residual = (codebook[0] + rng.normal(size=(400, 4)) * 0.05).astype(np.float32)
  nearest = np.asarray(clustering.sq_dists(residual, codebook)).argmin(1)
  balanced = clustering.sinkhorn_codes(residual, codebook)
  assert len(set(nearest.tolist())) == 1
  assert np.bincount(balanced, minlength=8).max() <= 80  # ≈ 400 / 8 each


def test_item_sentence():
  rec = {"title": "Nail Lacquer", "brand": "OPI", "categories": [["Beauty", "Nails"]]}
  assert embeddings.item_sentence(rec) == (
      "Title: Nail Lacquer. Brand: OPI. Categories: Beauty > Nails")
  assert embeddings.item_sentence({"title": "x", "categories": "A,B"}) == (
      "Title: x. Categories: A > B")
  assert embeddings.item_sentence(None) == ""


def test_coba_tokenizer_stage_through_the_entry_point(tmp_path):
  workdir = tmp_path / "tok"
  proc = subprocess.run(
      [sys.executable, "-m", "s2gr_jax.main", "--config", "configs/default.py:tiny",
       "--workdir", str(workdir), "--config.stages=tokenize",
       "--config.tokenizer.kind=coba", "--config.tokenizer.rqvae.steps=60",
       "--config.tokenizer.rqvae.log_every=20", "--config.tokenizer.rqvae.batch_size=64",
       "--config.tokenizer.rqvae.hidden=(32,)", "--config.tokenizer.rqvae.latent_dim=8"],
      cwd=str(pathlib_root()), capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  stats = json.loads((workdir / "sid" / "codebook_stats.json").read_text())
  for key in ("utilization", "perplexity"):
    assert len(stats[key]) == 3
  assert 0 <= stats["collision_rate"] <= 1 and 0 < stats["unique_sid_share"] <= 1
  assert stats["tokenizer"] == "coba" and stats["history"]["step"] == [20, 40, 60]
  assert (workdir / "sid" / "codebook_usage.png").stat().st_size > 1000
  assert (workdir / "sid" / "tokenizer_training.png").stat().st_size > 1000
  assert "Co-occurrence graph" in proc.stdout and "tokenizer step 60/60" in proc.stdout
  assert not (workdir / "results.json").exists()  # tokenize_only stops there
  tb = list((workdir / "tensorboard").glob("events.*"))
  assert tb and any("tokenizer/" in l for l in (workdir / "metrics.jsonl").read_text().split())


def pathlib_root():
  import pathlib  # pylint: disable=g-import-not-at-top
  return pathlib.Path(__file__).resolve().parents[1]
