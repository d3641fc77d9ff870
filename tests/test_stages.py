"""Stages: the list from the config, starting from another run's checkpoint, evaluation
alone; the train loop with an injected step and a trainable subset."""

from flax import nnx
import jax
import ml_collections
import numpy as np
import optax
import pytest

from s2gr_jax import checkpoints as ckpt_lib
from s2gr_jax import config_lib
from s2gr_jax import parallel
from s2gr_jax import run
from s2gr_jax import stages
from s2gr_jax import train
import factories
import test_run

SHORT = {"train.num_steps": 20, "train.eval_every": 20}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished tiny run (40 steps) and its results."""
  workdir = str(tmp_path_factory.mktemp("source"))
  return workdir, run.run(test_run.tiny_config(), workdir)


def test_stage_lists_are_checked():
  assert stages.parse("tokenize, train,evaluate") == ["tokenize", "train", "evaluate"]
  for spec, message in (("train,evaluate", "must start with 'tokenize'"),
                        ("tokenize,trian", "unknown stage 'trian'"),
                        ("", "config.stages is empty")):
    with pytest.raises(ValueError, match=message):
      stages.parse(spec)
  with pytest.raises(ValueError, match="'evaluate' needs a model"):
    config_lib.validate(test_run.tiny_config(stages="tokenize,evaluate"))


def test_evaluate_alone_reproduces_the_source_run(trained, tmp_path):
  source, results = trained
  again = run.run(test_run.tiny_config(**{"stages": "tokenize,evaluate",
                                          "init.from_workdir": source}),
                  str(tmp_path / "eval"))
  for key in ("test/recall@10", "test/ndcg@10", "val/ndcg@10",
              "baselines/last_item/test/ndcg@10"):
    assert again[key] == results[key], key
  assert again["init/from_workdir"] == source and again["train/steps"] == 0
  assert "| tiger |" in (tmp_path / "eval" / "results.md").read_text()


def test_training_starts_from_the_source_checkpoint(trained, tmp_path):
  source, _ = trained
  scratch = test_run.train_losses(source)
  run.run(test_run.tiny_config(**SHORT, **{"init.from_workdir": source}),
          str(tmp_path / "init"))
  warm = test_run.train_losses(str(tmp_path / "init"))
  # Fine-tuning from the trained model starts far below training from scratch.
  assert warm[10] < scratch[10] - 0.2, (warm, scratch)
  # Resume wins over init: the finished run is re-evaluated, not initialised again.
  again = run.run(test_run.tiny_config(**SHORT, **{"init.from_workdir": source}),
                  str(tmp_path / "init"))
  assert test_run.train_losses(str(tmp_path / "init")) == warm and again["train/steps"] == 20


def test_init_from_a_run_on_other_sids_or_shapes_fails_clearly(trained, tmp_path):
  source, _ = trained
  other_sids = test_run.tiny_config(**SHORT, **{"init.from_workdir": source,
                                                "tokenizer.seed": 5})
  with pytest.raises(ValueError, match="trained on other Semantic IDs"):
    run.run(other_sids, str(tmp_path / "a"))
  wider = test_run.tiny_config(**SHORT, **{"init.from_workdir": source,
                                           "model.tiger.d_ff": 128})
  with pytest.raises(ValueError, match="its best checkpoint does not fit this model"):
    run.run(wider, str(tmp_path / "b"))
  with pytest.raises(FileNotFoundError, match="no .*sid_table.npz"):
    run.run(test_run.tiny_config(**SHORT, **{"init.from_workdir": str(tmp_path / "none")}),
            str(tmp_path / "c"))


def test_tokenize_alone_stops_after_the_sids(tmp_path):
  assert run.run(test_run.tiny_config(stages="tokenize"), str(tmp_path / "t")) == {}
  assert (tmp_path / "t" / "sid" / "sid_table.npz").exists()
  assert not (tmp_path / "t" / "results.json").exists()
  assert ckpt_lib.Checkpoints(str(tmp_path / "t"), 1).latest_step() is None
  # A GRPO recipe (rl.enabled) asked for its SIDs only stays a tokenize-only run.
  grpo = test_run.tiny_config(stages="tokenize", **{"rl.enabled": True})
  assert stages.plan(grpo) == ["tokenize"]
  config_lib.validate(grpo)
  assert stages.plan(test_run.tiny_config(**{"rl.enabled": True})) == [
      "tokenize", "train", "evaluate", "rl", "evaluate"]


def test_only_the_trainable_parameters_move():
  table = factories.sid_table()
  make = lambda rngs: factories.tiny_tiger(table, seed=0, dropout=0.1)
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)))
  tx = optax.adam(1e-2)
  wrt = train.trainable("^decoder/")
  graphdef, _, state = train.create_state(make, tx, 0, mesh, wrt=wrt)
  before = {parallel.path_string(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(state[0])}
  step = train.make_train_step(graphdef, lambda s: 1e-2, wrt)
  batch = parallel.shard_batch(factories.batch(table, batch_size=4), mesh)
  losses = []
  for _ in range(3):
    state, metrics = step(state, batch, jax.random.key(0))
    losses.append(float(metrics["loss"]))
  after = {parallel.path_string(p): np.asarray(v)
           for p, v in jax.tree_util.tree_leaves_with_path(state[0])}
  moved = {k for k in before if not np.array_equal(before[k], after[k])}
  assert moved and all(k.startswith("decoder/") for k in moved), sorted(moved)
  assert any(k.startswith("encoder/") for k in before)
  assert losses[-1] < losses[0]
  # The optimizer keeps Adam's two moments for the trainable parameters only.
  model_params = len(jax.tree.leaves(nnx.state(make(nnx.Rngs(0)), nnx.Param)))
  decoder_params = len([k for k in before if k.startswith("decoder/")])
  _, _, full = train.create_state(make, tx, 0, mesh)
  assert 0 < decoder_params < model_params
  assert (len(jax.tree.leaves(full[1])) - len(jax.tree.leaves(state[1]))
          == 2 * (model_params - decoder_params))
  with pytest.raises(ValueError, match="matches none of the model's parameter paths"):
    train.create_state(make, tx, 0, mesh, wrt=train.trainable("^nothing/"))
  with pytest.raises(ValueError, match="is not a regular expression"):
    train.trainable("(")
