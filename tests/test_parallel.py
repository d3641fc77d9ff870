"""Mesh parsing, sharding rules over every parameter, and sharded runs matching 1 device."""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from s2gr_jax import metric_writer
from s2gr_jax import models
from s2gr_jax import parallel
from s2gr_jax import run
from s2gr_jax import train
import factories
import test_run


def mesh_cfg(data=-1, fsdp=1, tensor=1):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, rules=()))


def test_mesh_shapes_and_errors():
  assert parallel.mesh_shape(mesh_cfg(), 8) == (8, 1, 1)
  assert parallel.mesh_shape(mesh_cfg(4, -1), 8) == (4, 2, 1)
  assert parallel.mesh_shape(mesh_cfg(-1, 2, 2), 8) == (2, 2, 2)
  assert parallel.mesh_shape(mesh_cfg(1), 8) == (1, 1, 1)  # a subset on one host
  for bad, message in ((mesh_cfg(3, -1), "3 does not divide the 8 devices"),
                       (mesh_cfg(-1, -1), "only one of"),
                       (mesh_cfg(4, 2, 2), "needs 16 devices"),
                       (mesh_cfg(0), "must be positive or -1"),
                       (mesh_cfg(3), "needs 3 devices, which does not divide")):
    with pytest.raises(ValueError, match=message):
      parallel.mesh_shape(bad, 8)
  mesh = parallel.make_mesh(mesh_cfg(4, 2))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  with pytest.raises(ValueError, match="multiple of the 8 devices"):
    parallel.check_batch_size(12, mesh, "train.batch_size")


def test_rules_reach_every_parameter_and_the_optimizer():
  table = factories.sid_table()
  make = models.build(test_run.tiny_config().model, table, user_buckets=10,
                      max_history=20)
  mesh = parallel.make_mesh(mesh_cfg(2, 2, 2))
  _, _, state = train.create_state(make, train.make_optimizer(test_run.tiny_config().train),
                                   0, mesh)
  specs = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    assert isinstance(leaf.sharding, jax.sharding.NamedSharding)
    specs[parallel.path_string(path)] = leaf.sharding.spec
  q = [p for p in specs if p.endswith("encoder/0/attn/q/kernel")]
  assert len(q) == 3  # the parameter and Adam's two moments
  assert all(specs[p] == P("fsdp", "tensor") for p in q)
  assert all(specs[p] == P("tensor", "fsdp") for p in specs if p.endswith("mlp/wo/kernel"))
  embed = next(p for p in specs if p.endswith("0/embed/embedding"))
  vocab = next(l.shape[0] for k, l in jax.tree_util.tree_leaves_with_path(state)
               if parallel.path_string(k) == embed)
  # Rows over fsdp when they divide (the vocabulary size is data-dependent).
  assert specs[embed] == P("fsdp" if vocab % 2 == 0 else None, "tensor")
  # Every matrix is split somewhere; vectors (norm scales) and the step stay whole.
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    name = parallel.path_string(path)
    if leaf.ndim == 2 and "bias/embedding" not in name:
      assert any(a is not None for a in leaf.sharding.spec), name
    if leaf.ndim < 2:
      assert leaf.sharding.spec == P(), name
  # A dimension that does not divide by its axes stays whole.
  assert parallel.spec_for("x/q/kernel", (6, 4), mesh, parallel.DEFAULT_RULES) == P(
      "fsdp", "tensor")
  assert parallel.spec_for("x/q/kernel", (5, 4), mesh, parallel.DEFAULT_RULES) == P(
      None, "tensor")


@pytest.mark.parametrize("layout", [dict(data=4, fsdp=2), dict(data=4, tensor=2)])
def test_sharded_training_matches_one_device(tmp_path, layout):
  base = {"train.num_steps": 20, "train.eval_every": 20, "model.tiger.dropout": 0.0}
  one = run.run(test_run.tiny_config(**base, **{"mesh.data": 1}), str(tmp_path / "one"))
  mesh = {f"mesh.{k}": v for k, v in layout.items()}
  many = run.run(test_run.tiny_config(**base, **mesh), str(tmp_path / "many"))
  l1 = test_run.train_losses(str(tmp_path / "one"))
  l8 = test_run.train_losses(str(tmp_path / "many"))
  assert sorted(l1) == sorted(l8) == [10, 20]
  for step in l1:
    assert l8[step] == pytest.approx(l1[step], rel=1e-5)
  for key in ("test/recall@10", "test/ndcg@10"):
    assert many[key] == pytest.approx(one[key], abs=1e-6)
