"""REG4Rec's MPQ tokenizer: parallel, unordered codebooks."""

import json

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2gr_jax import config_lib
from s2gr_jax import run
from s2gr_jax.sid import diagnostics
from s2gr_jax.sid import mpq
from s2gr_jax.sid import quantizers
from s2gr_jax.sid import table as table_lib

import test_run  # pylint: disable=g-bad-import-order


def _small(**kw):
  settings = dict(experts=4, codebook_size=8, latent_dim=4, hidden=(16,), steps=150,
                  batch_size=128, lr=3e-3, kmeans_iters=10, log_every=50, seed=0)
  settings.update(kw)
  return mpq.MPQ(**settings)


def _data(n=400, d=12, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(10, d)) * 3
  return (centres[rng.integers(0, 10, n)] + rng.normal(size=(n, d)) * 0.5).astype(np.float32)


@pytest.mark.parametrize("experts", [4, 8])
def test_mpq_trains_and_gives_every_item_m_unordered_tokens(experts):
  q = _small(experts=experts).fit(_data())
  assert q.codes.shape == (400, experts) and not q.ordered
  assert q.codes.min() >= 0 and q.codes.max() < 8
  h = q.history
  assert h["step"] == [50, 100, 150]
  assert h["loss"][-1] < h["loss"][0] and h["recon_mse"][-1] < h["recon_mse"][0]
  assert np.asarray(h["expert_correlation"]).shape == (experts, experts)
  assert np.isclose(sum(h["router_mean_final"]), 1.0, atol=1e-4)
  table = table_lib.SidTable.from_semantic_codes(q.codes, q.codebook_sizes, q.ordered,
                                                 q.codebooks)
  assert not table.ordered and table.semantic_levels == experts
  assert len(np.unique(table.codes, axis=0)) == 400  # de-dup makes token sets unique
  if table.num_levels > experts:  # items sharing all M tokens got the de-dup token
    shared = diagnostics.code_stats(q.codes, 8)["collision_rate"]
    assert shared > 0


def test_orthogonality_on_hand_made_outputs():
  same = jnp.ones((3, 5, 4))
  assert float(mpq.orthogonality(same)) == pytest.approx(1.0)
  eye = jnp.eye(3)[:, None, :].repeat(5, 1)  # expert r outputs the r-th basis vector
  assert float(mpq.orthogonality(eye)) == pytest.approx(0.0)


def test_orthogonality_gradient_pushes_experts_apart():
  model = mpq.MPQModel(12, (16,), 4, 4, 8, rngs=nnx.Rngs(0))
  # Make the experts start nearly identical: the first expert's weights for all.
  first = nnx.state(model.experts[0])
  for expert in model.experts[1:]:
    noise = jax.tree.map(lambda a: a + 0.01 * jax.random.normal(jax.random.key(1), a.shape),
                         first)
    nnx.update(expert, noise)
  x = jnp.asarray(_data(64))
  before = float(mpq.orthogonality(model.encode(x)))
  assert before > 0.9
  grads = nnx.grad(lambda m: mpq.orthogonality(m.encode(x)))(model)
  params = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda p, g: p - 0.5 * g, params,
                                 nnx.state(grads, nnx.Param)))
  assert float(mpq.orthogonality(model.encode(x))) < before - 0.01


def test_orthogonality_weight_lowers_expert_correlation():
  x = _data()
  off = np.asarray(_small(orthogonality_weight=0.0).fit(x).history["expert_correlation"])
  on = np.asarray(_small(orthogonality_weight=5.0).fit(x).history["expert_correlation"])
  mask = ~np.eye(4, dtype=bool)
  assert on[mask].mean() < off[mask].mean()


def test_assignment_information_on_hand_made_distances():
  k, b = 4, 64
  codes = np.arange(b) % k
  dist = 10.0 * (1 - jax.nn.one_hot(codes, k))  # hard assignments to `codes`
  same = jnp.stack([dist, dist])  # two experts, the same partition
  # with a sharp softmax the information is log K for one partition, ~0 for two
  # partitions that are independent (codes and codes // K of a 4 × 4 grid)
  assert float(mpq.assignment_information(same, 0.01)) == pytest.approx(np.log(k), abs=1e-3)
  other = 10.0 * (1 - jax.nn.one_hot((np.arange(b) // k) % k, k))
  indep = jnp.stack([dist, other])
  assert float(mpq.assignment_information(indep, 0.01)) == pytest.approx(0.0, abs=1e-3)


def test_independence_weight_lowers_collisions_and_concat_trains():
  x = _data(seed=1)
  stats = lambda q: diagnostics.code_stats(q.codes, 8)["collision_rate"]
  off = stats(_small(independence_weight=0.0, steps=100).fit(x))
  on = stats(_small(independence_weight=1.0, steps=100).fit(x))
  assert on < off
  q = _small(combine="concat", steps=100).fit(x)
  assert q.history["recon_mse"][-1] < q.history["recon_mse"][0]
  with pytest.raises(ValueError, match="combine"):
    mpq.MPQModel(12, (16,), 4, 4, 8, rngs=nnx.Rngs(0), combine="product")


def test_config_builds_mpq_and_checks_it():
  c = config_lib.base_config()
  c.tokenizer.kind = "mpq"
  c.tokenizer.mpq.experts = 8
  q = quantizers.make_quantizer(c.tokenizer)
  assert isinstance(q, mpq.MPQ) and q.experts == 8 and q.codebook_size == 256
  c.tokenizer.mpq.experts = 1
  with pytest.raises(ValueError, match="tokenizer.mpq.experts=1"):
    config_lib.validate(c)


def test_mpq_tokenize_stage(tmp_path):
  config = test_run.tiny_config(stages="tokenize", **{
      "tokenizer.kind": "mpq", "tokenizer.mpq.steps": 60, "tokenizer.mpq.log_every": 30,
      "tokenizer.mpq.hidden": (32,), "tokenizer.mpq.latent_dim": 8})
  assert run.run(config, str(tmp_path)) == {}
  table = table_lib.SidTable.load(tmp_path / "sid")
  assert not table.ordered and table.semantic_levels == 4
  stats = json.loads((tmp_path / "sid" / "codebook_stats.json").read_text())
  assert stats["tokenizer"] == "mpq" and len(stats["utilization"]) == 4
  assert len(stats["history"]["expert_correlation"]) == 4
  cats = json.loads((tmp_path / "sid" / "token_categories.json").read_text())
  assert len(cats["levels"]) == 4 and len(cats["levels"][0]) == table.codebook_sizes[0]
  assert all(0 <= p <= 1 for p in cats["purity"])


# --- token categories ---------------------------------------------------------------------

def test_category_paths_of_every_spelling():
  from s2gr_jax.sid import categories  # pylint: disable=g-import-not-at-top
  assert categories.category_paths({"categories": "[['Beauty', 'Makeup', 'Nails']]"}) == [
      ["Beauty", "Makeup", "Nails"]]
  assert categories.category_paths({"categories": "Industrial & Scientific,Lab,Tubes"}) == [
      ["Industrial & Scientific", "Lab", "Tubes"]]
  assert categories.category_paths({"categories": [["A", "B"], ["A", "C"]]}) == [
      ["A", "B"], ["A", "C"]]
  assert categories.category_paths({"title": "x"}) == []


def test_token_categories_by_majority_on_a_hand_made_case():
  from s2gr_jax.sid import categories  # pylint: disable=g-import-not-at-top
  text = [{"categories": [["Top", "hats"]]}, {"categories": [["Top", "hats"]]},
          {"categories": [["Top", "tools"]]}, {"title": "no category"},
          {"categories": [["Top", "tools"]]}]
  item_cat, names = categories.item_categories(text, None, 5)
  assert names == ["hats", "tools"] and item_cat.tolist() == [0, 0, 1, -1, 1]
  # level 0: code 0 holds items 1, 2, 3 (hats, hats, tools) -> hats; code 1 holds item 4
  # (no category) and 5 (tools) -> tools; code 2 is unused -> -1.
  codes = np.array([[0, 1], [0, 0], [0, 0], [1, 1], [1, 1]])
  per_level = categories.token_categories(codes, (3, 2), item_cat)
  assert per_level[0].tolist() == [0, 1, -1]
  assert per_level[1].tolist() == [0, 0]  # tie (hats 1, tools 1) -> the smaller id
  attrs, _ = categories.item_categories(None, [[7, 1], [], [7]], 3)
  assert attrs.tolist() == [0, -1, 0]


def test_codebooks_of_different_sizes():
  sizes = (3, 8, 5, 8)
  q = _small(codebook_sizes=sizes, steps=100).fit(_data())
  assert q.codebook_sizes == sizes
  for r, k in enumerate(sizes):  # codes stay inside their own codebook, and use it
    assert 0 <= q.codes[:, r].min() and q.codes[:, r].max() < k
    assert len(np.unique(q.codes[:, r])) == k
    assert q.codebooks[r].shape == (k, 4)
  assert q.history["loss"][-1] < q.history["loss"][0]
  table = table_lib.SidTable.from_semantic_codes(q.codes, q.codebook_sizes, q.ordered,
                                                 q.codebooks)
  assert table.codebook_sizes[:4] == sizes
  assert len(np.unique(table.codes, axis=0)) == 400
  # padded rows never win, whatever the distances: a padded code at the input itself
  model = mpq.MPQModel(12, (16,), 4, 2, (2, 4), rngs=nnx.Rngs(0))
  e = model.encode(jnp.asarray(_data(n=6)))
  model.codebooks[...] = model.codebooks[...].at[0, 2:].set(e[0, :2])
  codes, _ = model.quantize(e, 0.0, 0.2)
  assert int(codes[:, 0].max()) < 2
  with pytest.raises(ValueError, match="one size per expert"):
    _small(codebook_sizes=(8, 8)).fit(_data())
  c = config_lib.base_config()
  c.tokenizer.kind = "mpq"
  c.tokenizer.mpq.codebook_sizes = (16, 256, 256, 256)
  assert quantizers.make_quantizer(c.tokenizer).sizes == (16, 256, 256, 256)
  c.tokenizer.mpq.codebook_sizes = (16, 256)
  with pytest.raises(ValueError, match="codebook_sizes"):
    config_lib.validate(c)
