"""The model registry and its config sections; decoding picks the search from the index;
a new model trains and evaluates through the real run by one register line."""

import dataclasses
from typing import ClassVar

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from s2gr_jax import config_lib
from s2gr_jax import decoding
from s2gr_jax import models
from s2gr_jax import run
import factories
import test_run


def test_every_model_has_a_section_matching_its_dataclass():
  config = config_lib.base_config()
  assert set(models.REGISTRY) == {"tiger", "s2gr", "sasrec", "reg4rec"}
  for name, entry in models.REGISTRY.items():
    section = config.model[name].to_dict()
    fields = {f.name for f in dataclasses.fields(entry.config)}
    assert set(section) == fields - set(entry.config.FROM_RUN), name
  assert models.get("sasrec").search == "catalogue" and not models.get("sasrec").uses_sids
  assert models.get("s2gr").search == "prefix" and models.get("tiger").uses_sids
  assert models.get("reg4rec").search == "sets" and models.get("reg4rec").uses_sids


def test_a_key_the_model_does_not_take_fails_and_names_the_model(tmp_path):
  config = test_run.tiny_config()
  with config.unlocked():
    config.model.tiger.num_clusters = 4  # an S²GR field in TIGER's section
  with pytest.raises(ValueError, match="config.model.tiger has keys the tiger model does "
                     "not take: num_clusters"):
    config_lib.validate(config)
  with pytest.raises(ValueError, match="unknown model.name 'tigre'"):
    models.get("tigre")
  # Through the entry point: one line naming the model and the right section.
  proc = test_run.main("--config", "configs/default.py:tiny", "--workdir",
                       str(tmp_path / "a"), "--config.model.tiger.num_clusters=4",
                       check=False)
  assert proc.returncode != 0
  assert "the tiger model has no field 'num_clusters' (s2gr takes it)" in proc.stderr
  proc = test_run.main("--config", "configs/default.py:tiny", "--workdir",
                       str(tmp_path / "b"), "--config.model.dropout=0.2", check=False)
  assert proc.returncode != 0 and "--config.model.tiger.dropout=" in proc.stderr


def test_build_fills_the_run_fields_and_resolves_kernels():
  config = test_run.tiny_config()
  table = factories.sid_table()
  model = models.build(config.model, table, user_buckets=7, max_history=20)(nnx.Rngs(0))
  assert model.cfg.codebook_sizes == table.codebook_sizes and model.cfg.user_buckets == 7
  assert model.cfg.kernels == ("cpu" if jax.default_backend() == "cpu" else "plain")
  config.model.kernels = "plain"
  plain = models.build(config.model, table, user_buckets=7, max_history=20)(nnx.Rngs(0))
  assert plain.cfg.kernels == "plain"
  # The kernels do not change the parameters: same tree, same values.
  for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)),
                  jax.tree.leaves(nnx.state(plain, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_recommend_runs_the_search_of_the_index():
  table = factories.sid_table(num_items=40)
  batch = factories.batch(table, batch_size=3)
  tiger_model = factories.tiny_tiger(table, seed=1)
  trie = decoding.make_index(table, "prefix")
  assert isinstance(trie, decoding.PrefixTrie) and trie.widths == table.prefix_index().max_children
  np.testing.assert_array_equal(
      np.asarray(decoding.recommend(tiger_model, batch, trie, beam=5)[0]),
      np.asarray(decoding.beam_search(tiger_model, batch, trie, beam=5)[0]))
  config = test_run.tiny_config()
  config.model.name = "sasrec"
  sasrec = models.build(config.model, table, user_buckets=10, max_history=20)(nnx.Rngs(0))
  catalogue = decoding.make_index(table, models.get("sasrec").search)
  items, scores = decoding.recommend(sasrec, batch, catalogue, beam=5)
  np.testing.assert_array_equal(np.asarray(items), np.asarray(sasrec.rank(batch, 5)[0]))
  with pytest.raises(ValueError, match="unknown search 'graph'"):
    decoding.make_index(table, "graph")


# --- adding a model: one module, one config dataclass, one register line ---------------

@dataclasses.dataclass(frozen=True)
class BagConfig:
  """A bag-of-items scorer: mean history embedding · item embeddings."""

  FROM_RUN: ClassVar[tuple[str, ...]] = ("num_items",)

  num_items: int
  d_model: int = 16
  dropout: float = 0.0


class Bag(nnx.Module):

  def __init__(self, cfg: BagConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.items = nnx.Embed(cfg.num_items + 1, cfg.d_model, rngs=rngs)

  def item_scores(self, batch, rngs=None):
    del rngs
    mask = batch["history_mask"][..., None]
    user = (self.items(batch["history_items"]) * mask).sum(1) / jnp.maximum(mask.sum(1), 1)
    return user @ self.items.embedding[...][1:].T

  def loss(self, batch, rngs=None):
    scores = self.item_scores(batch, rngs)
    ce = optax.softmax_cross_entropy_with_integer_labels(scores, batch["target_item"] - 1)
    loss = (ce * batch["weight"]).sum() / jnp.maximum(batch["weight"].sum(), 1)
    return loss, {"loss": loss}

  def rank(self, batch, k):
    scores, idx = jax.lax.top_k(self.item_scores(batch), k)
    return idx.astype(jnp.int32) + 1, scores


def test_a_new_model_runs_by_registering_it(tmp_path):
  models.register("bag", BagConfig, Bag, search="catalogue")
  try:
    config = test_run.tiny_config(**{"model.name": "bag", "train.num_steps": 20,
                                     "train.eval_every": 20})
    # Its section holds its fields; the recipe's shared sizes reach it like any model's.
    assert config.model.bag.to_dict() == {"d_model": 32, "dropout": 0.1}
    results = run.run(config, str(tmp_path / "bag"))
    assert results["train/steps"] == 20 and 0.0 <= results["test/ndcg@10"] <= 1.0
    losses = test_run.train_losses(str(tmp_path / "bag"))
    assert losses[20] < losses[10]
    assert "| bag |" in (tmp_path / "bag" / "results.md").read_text()
  finally:
    models.REGISTRY.pop("bag")


def test_a_config_saved_before_the_model_sections_loads_into_them():
  flat = {"name": "s2gr", "d_model": 48, "num_clusters": 8, "dropout": 0.0,
          "thoughts_per_level": 2}
  config = config_lib.from_saved({"seed": 3, "model": flat})
  assert config.model.name == "s2gr" and config.model.kernels == "auto"
  assert (config.model.s2gr.d_model, config.model.s2gr.num_clusters,
          config.model.s2gr.thoughts_per_level) == (48, 8, 2)
  assert config.model.tiger.to_dict() == models.section_defaults("tiger")
  models.check_section("s2gr", config.model.s2gr.to_dict())
  current = config_lib.base_config().to_dict()
  assert config_lib.from_saved(current).to_dict() == current


def test_a_sasrec_run_saved_before_positions_keeps_its_positions():
  """Runs saved before ``model.sasrec.positions`` read positions from the start of the
  history; loading them must not switch to the new default."""
  section = models.section_defaults("sasrec")
  assert section.pop("positions") == "from_end"
  config = config_lib.from_saved({"model": {"name": "sasrec", "sasrec": section}})
  assert config.model.sasrec.positions == "from_start"
  flat = config_lib.from_saved({"model": {"name": "sasrec", "d_model": 32}})
  assert (flat.model.sasrec.positions, flat.model.sasrec.d_model) == ("from_start", 32)
  section["positions"] = "from_end"
  config = config_lib.from_saved({"model": {"name": "sasrec", "sasrec": section}})
  assert config.model.sasrec.positions == "from_end"
