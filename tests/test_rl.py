"""The GRPO stage: rewards by hand, MSRA's future items, advantages, constrained
sampling, zero learning rate, and runs through the real entry point (reward rises,
resume after a stop gives the same state)."""

import json

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from s2gr_jax import config_lib
from s2gr_jax import decoding
from s2gr_jax import metric_writer
from s2gr_jax import parallel
from s2gr_jax import run
from s2gr_jax import train
from s2gr_jax.data import pipeline
from s2gr_jax.models import tiger
from s2gr_jax.rl import grpo
from s2gr_jax.rl import rewards
from s2gr_jax.sid import table as table_lib

import factories  # pylint: disable=g-bad-import-order
import test_reg4rec  # pylint: disable=g-bad-import-order
import test_run  # pylint: disable=g-bad-import-order


def hand_tables():
  """Items 1..3 with codes (0,1,2), (0,1,3), (1,1,2) over 3 codebooks of 4 codes;
  categories: codebook 0 codes 0, 1 → A; codebook 1 code 1 → B; codebook 2 code 2 → B,
  code 3 → C (A = 0, B = 1, C = 2; the rest unknown)."""
  codes = np.array([[0, 1, 2], [0, 1, 3], [1, 1, 2]])
  table = table_lib.SidTable.from_semantic_codes(codes, (4, 4, 4))
  cats = np.full(12, -1)
  cats[[0, 1]] = 0
  cats[4 + 1] = 1
  cats[8 + 2], cats[8 + 3] = 1, 2
  return rewards.RewardTables(codes=jnp.asarray(table.lookup()),
                              token_category=jnp.asarray(cats), offsets=(0, 4, 8))


def paths(items, orders):
  return rewards.Paths(item=jnp.asarray([items]), order=jnp.asarray([orders]))


def test_each_reward_on_a_hand_made_case():
  tables = hand_tables()
  p = paths([2, 3, 1], [[0, 1, 2], [0, 1, 2], [1, 2, 0]])
  target = jnp.asarray([1])
  got = {name: np.asarray(fn(p, target, tables))[0] for name, fn in rewards.REWARDS.items()
         if name != "rank"}  # (beam rollouts only: its own test)
  # item 2 = (0,1,3) vs target (0,1,2): two of three codes; item 3 = (1,1,2): two.
  np.testing.assert_allclose(got["step_hit"], [2 / 3, 2 / 3, 1.0])
  np.testing.assert_allclose(got["global_path"], [0, 0, 1])
  # categories: item 2 (A,B,C), item 3 (A,B,B), target (A,B,B)
  np.testing.assert_allclose(got["category_hit"], [2 / 3, 1.0, 1.0])
  # in path order: item 2 A,B,C → 0 of 2 pairs; item 3 A,B,B → 1; item 1 along
  # (1,2,0): B,B,A → 1 of 2.
  np.testing.assert_allclose(got["step_consistency"], [0.0, 0.5, 0.5])
  # SIDReasoner: 2 leading levels → 0.5; first level misses → 0; exact → 1; + 0.1 valid
  np.testing.assert_allclose(got["prefix"], [0.6, 0.1, 1.1], rtol=1e-6)


def test_rank_reward_penalises_wrong_items_by_beam_place_only_when_the_target_is_found():
  tables = hand_tables()
  rank = jnp.asarray([[0, 1, 2], [0, 1, 2]])
  p = rewards.Paths(item=jnp.asarray([[2, 1, 3], [2, 3, 2]]), order=jnp.zeros((2, 3, 3),
                                                                              jnp.int32),
                    rank=rank)
  got = np.asarray(rewards.rank(p, jnp.asarray([1, 1]), tables))
  d = 1 / np.log2(np.arange(3) + 2)
  np.testing.assert_allclose(got[0], [-d[0] / d.sum(), 0.0, -d[2] / d.sum()], rtol=1e-6)
  np.testing.assert_allclose(got[1], 0.0)  # the target is not in the group
  with pytest.raises(ValueError, match="rl.rollout='beam'"):
    rewards.rank(paths([1, 2, 3], [[0, 1, 2]] * 3), jnp.asarray([1]), tables)


def test_msra_weights_future_targets_and_skips_missing_ones():
  tables = hand_tables()
  p = paths([2, 1], [[0, 1, 2]] * 2)
  total, parts = rewards.combine(p, jnp.asarray([[1, 2, 0]]), tables,
                                 {"global_path": 2.0}, decay=0.5)
  # item 2 is the second target (w 0.5), item 1 the first (w 1); the third is absent.
  np.testing.assert_allclose(np.asarray(parts["global_path"])[0], [0.5, 1.0])
  np.testing.assert_allclose(np.asarray(total)[0], [1.0, 2.0])


def test_reward_weights_are_parsed_and_checked():
  assert rewards.parse_weights("auto", "sets") == {
      "step_hit": 1, "global_path": 1, "category_hit": 1, "step_consistency": 1}
  assert rewards.parse_weights("auto", "prefix") == {"prefix": 1}
  assert rewards.parse_weights("step_hit=0.5,global_path", "sets") == {
      "step_hit": 0.5, "global_path": 1.0}
  with pytest.raises(ValueError, match="unknown reward 'hits'"):
    rewards.parse_weights("hits=1", "sets")
  with pytest.raises(ValueError, match="not a number"):
    rewards.parse_weights("step_hit=x", "sets")
  with pytest.raises(ValueError, match="rewards='none' leaves nothing to learn"):
    rewards.parse_weights("none", "sets")
  assert rewards.parse_weights("none", "sets", allow_none=True) == {}


def test_msra_future_items_come_from_the_training_part_only():
  rng = np.random.default_rng(0)
  sequences = [rng.permutation(np.arange(1, 30))[:n] for n in (3, 5, 7, 12)]
  split = pipeline.LeaveOneOut.from_sequences(sequences)
  padded = pipeline.padded_sequences(None, len(sequences), sequences)
  codes = np.zeros((30, 2), np.int32)
  make = pipeline.MakeBatch(padded, codes, np.zeros(4, np.int32), 20, 20, future=3,
                            lengths=split.lengths)
  index = split.train_index()
  batch = make.map(index)
  assert batch["future_items"].shape == (len(index), 3)
  for (user, pos), future in zip(index, batch["future_items"]):
    seq, n = sequences[user], len(sequences[user])
    held_out = set(seq[n - 2:])  # the validation and test targets
    assert not held_out & set(future.tolist())
    want = [seq[p] if p < n - 2 else 0 for p in range(pos + 1, pos + 4)]
    assert future.tolist() == want


def test_group_advantages_sum_to_zero_per_group():
  r = jax.random.uniform(jax.random.key(0), (5, 16))
  adv = grpo.group_advantages(r.at[2].set(0.3))  # one group with equal rewards
  # equal rewards whose float mean is not exact (16 x 0.1) give exactly 0, not noise / eps
  flat = grpo.group_advantages(jnp.full((1, 16), 0.1, jnp.float32))
  assert float(jnp.abs(flat).max()) == 0.0
  np.testing.assert_allclose(np.asarray(adv.sum(-1)), 0, atol=1e-4)
  np.testing.assert_allclose(np.asarray(adv[2]), 0)
  np.testing.assert_allclose(np.asarray(adv.std(-1))[[0, 1, 3, 4]], 1, atol=1e-3)


def _check_rollout(rollout, table, index_kind):
  items = np.asarray(rollout.paths.item)
  assert items.min() >= 1 and items.max() <= table.num_items  # a catalogue item each
  codes = table.lookup()[items]  # [B, G, L]
  for step in range(len(rollout.slots)):
    token = np.asarray(rollout.tokens(step))
    valid = np.take_along_axis(np.asarray(rollout.valid[step]),
                               np.asarray(rollout.slots[step])[..., None], -1)[..., 0]
    assert valid.all()  # every draw was an allowed candidate
    if index_kind == "prefix" or step == table.semantic_levels:
      assert (token == codes[..., step]).all()
    else:  # sets: the flat token of the codebook the step chose
      book = np.asarray(rollout.paths.order)[..., step]
      size = table.codebook_sizes[0]
      assert (token == book * size + np.take_along_axis(codes, book[..., None], -1)[..., 0]
              ).all()


def test_sampled_paths_are_catalogue_items_prefix():
  table = factories.sid_table(num_items=40)
  model = factories.tiny_tiger(table)
  index = decoding.make_index(table, "prefix")
  batch = factories.batch(table, batch_size=4)
  rollout = jax.jit(lambda m, b, k: grpo.sample_paths(m, b, index, group=32, key=k))(
      model, batch, jax.random.key(1))
  _check_rollout(rollout, table, "prefix")
  assert len(np.unique(np.asarray(rollout.paths.item))) > 4  # it samples, not argmax


@pytest.mark.parametrize("order", ["confidence", "fixed"])
def test_sampled_paths_are_catalogue_items_sets(order):
  table = test_reg4rec.unordered_table(num_items=30)
  model = test_reg4rec.tiny_reg4rec(table, order=order)
  index = decoding.make_index(table, "sets", compact=False)
  batch = factories.batch(table, batch_size=4)
  rollout = jax.jit(lambda m, b, k: grpo.sample_paths(m, b, index, group=32, key=k))(
      model, batch, jax.random.key(2))
  _check_rollout(rollout, table, "sets")
  orders = np.asarray(rollout.paths.order)
  assert (np.sort(orders, -1) == np.arange(3)).all()  # each codebook once
  if order == "fixed":
    assert (orders == np.arange(3)).all()
  # The replayed log-probability of each path is that of the draws: finite, <= 0.
  lp, ent = grpo.step_log_probs(model, batch, rollout)
  assert np.isfinite(np.asarray(lp)).all() and (np.asarray(lp) <= 1e-6).all()
  assert (np.asarray(ent) >= -1e-6).all()


@pytest.mark.parametrize("kind", ["prefix", "sets"])
def test_beam_rollouts_are_the_beam_search_items_replayed_along_allowed_steps(kind):
  if kind == "prefix":
    table = factories.sid_table(num_items=40)
    model, extras = factories.tiny_tiger(table), {}
  else:
    table = test_reg4rec.unordered_table(num_items=30)
    model, extras = test_reg4rec.tiny_reg4rec(table), {"compact": False}
  index = decoding.make_index(table, kind, **extras)
  codes = rewards.RewardTables.from_table(table).codes
  batch = factories.batch(table, batch_size=4)
  rollout = jax.jit(lambda m, b: grpo.beam_paths(m, b, index, group=8, codes=codes))(
      model, batch)
  want, _ = decoding.recommend(model, batch, index, beam=8)
  np.testing.assert_array_equal(np.asarray(rollout.paths.item), np.asarray(want))
  assert all(len(set(row)) == 8 for row in np.asarray(want).tolist())  # distinct items
  np.testing.assert_array_equal(np.asarray(rollout.paths.rank), np.tile(np.arange(8), (4, 1)))
  _check_rollout(rollout, table, kind)
  lp, _ = grpo.step_log_probs(model, batch, rollout)
  assert np.isfinite(np.asarray(lp)).all()
  # Forcing a sampled group's own items replays exactly that group.
  sampled = grpo.sample_paths(model, batch, index, group=8, key=jax.random.key(3))
  again = grpo.sample_paths(model, batch, index, group=8, key=None,
                            forced=sampled.paths.item, codes=codes)
  for a, b in zip(sampled.slots, again.slots):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(sampled.paths.order),
                                np.asarray(again.paths.order))


def _state(table, lr, mesh):
  cfg = tiger.TigerConfig(codebook_sizes=table.codebook_sizes, user_buckets=10,
                          d_model=32, num_heads=2, head_dim=16, d_ff=64, encoder_layers=1,
                          decoder_layers=1, dropout=0.0)
  rl = ml_collections.ConfigDict(dict(lr=lr, warmup_steps=0, weight_decay=0.0,
                                      grad_clip=1.0))
  return train.create_state(lambda rngs: tiger.Tiger(cfg, rngs=rngs),
                            grpo.make_optimizer(rl), 0, mesh)


@pytest.mark.parametrize("lr,rollout", [(0.0, "sample"), (1e-2, "sample"),
                                        (0.0, "beam"), (1e-2, "beam")])
def test_zero_learning_rate_keeps_the_sft_policy(lr, rollout):
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1,
                                                           rules=())))
  table = factories.sid_table(num_items=40)
  graphdef, model_graphdef, state = _state(table, lr, mesh)
  sft = jax.tree.map(lambda x: x.copy(), state[0])
  index = decoding.make_index(table, "prefix")
  tables = rewards.RewardTables.from_table(table)
  weights = (("step_hit", 1.0),) + ((("rank", 1.0),) if rollout == "beam" else ())
  step = grpo.make_rl_step(graphdef, model_graphdef,
                           grpo.GrpoSettings(group=8, weights=weights, rollout=rollout))
  batch = factories.batch(table, batch_size=4)
  state, metrics = step(state, batch, jax.random.key(0), sft, index, tables)
  changed = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(state[0]), jax.tree.leaves(sft))]
  if lr == 0:
    assert not any(changed)
    assert float(metrics["kl"]) == pytest.approx(0, abs=1e-6)
    assert float(metrics["ratio"]) == pytest.approx(1, abs=1e-6)
    assert float(metrics["clip_fraction"]) == 0
  else:  # the same step with a learning rate does move the policy
    assert any(changed) and float(metrics["grad_norm"]) > 0
  assert float(metrics["valid_rate"]) == 1.0
  if rollout == "beam":  # the beam's items are distinct
    assert float(metrics["unique_rate"]) == 1.0


def test_sft_weight_adds_the_targets_likelihood_and_learns_it():
  """rl.sft_weight: the logged NLL is the target's forced path's, it falls over steps on
  one batch, and with the weight 0 nothing of it is computed."""
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1,
                                                           rules=())))
  table = factories.sid_table(num_items=40)
  graphdef, model_graphdef, state = _state(table, 1e-2, mesh)
  sft = jax.tree.map(lambda x: x.copy(), state[0])
  index = decoding.make_index(table, "prefix")
  tables = rewards.RewardTables.from_table(table)
  batch = factories.batch(table, batch_size=4)
  model = nnx.merge(model_graphdef, state[0])
  forced = grpo.sample_paths(model, batch, index, group=1, key=None,
                             forced=batch["target_item"][:, None], codes=tables.codes)
  assert np.array_equal(forced.paths.item[:, 0], batch["target_item"])
  nll0 = -grpo.step_log_probs(model, batch, forced)[0].sum(-1)[:, 0]
  w = np.asarray(batch["weight"])
  settings = grpo.GrpoSettings(group=8, weights=(("global_path", 1.0),), sft_weight=1.0)
  step = grpo.make_rl_step(graphdef, model_graphdef, settings)
  nlls = []
  for i in range(5):
    state, metrics = step(state, batch, jax.random.key(i), sft, index, tables)
    nlls.append(float(metrics["sft_nll"]))
  assert nlls[0] == pytest.approx(float((nll0 * w).sum() / w.sum()), rel=1e-5)
  assert nlls[-1] < nlls[0] - 0.1
  plain = grpo.make_rl_step(graphdef, model_graphdef,
                            grpo.GrpoSettings(group=8, weights=(("global_path", 1.0),)))
  state, metrics = plain(state, batch, jax.random.key(0), sft, index, tables)  # donates
  assert "sft_nll" not in metrics
  # rl.rewards='none' (the NLL-only control): the reward is 0, the NLL still falls.
  none = grpo.make_rl_step(graphdef, model_graphdef,
                           grpo.GrpoSettings(group=8, weights=(), sft_weight=1.0))
  nlls = []
  for i in range(3):
    state, metrics = none(state, batch, jax.random.key(i), sft, index, tables)
    assert float(metrics["reward"]) == 0.0
    nlls.append(float(metrics["sft_nll"]))
  assert nlls[-1] < nlls[0]
  with pytest.raises(ValueError, match="nothing to learn unless config.rl.sft_weight"):
    grpo.GrpoSettings.from_config(ml_collections.ConfigDict(
        dict(rl_defaults(), rewards="none", sft_weight=0.0)), "prefix")
  assert grpo.GrpoSettings.from_config(ml_collections.ConfigDict(
      dict(rl_defaults(), rewards="none", sft_weight=0.1)), "prefix").weights == ()


def rl_defaults() -> dict:
  return config_lib.base_config().rl.to_dict()


# --- through the entry point ---------------------------------------------------------

RL_KEYS = {"rl.enabled": True, "rl.batch_size": 32, "rl.group_size": 8, "rl.lr": 3e-4,
           "rl.num_steps": 40, "rl.log_every": 10, "rl.eval_every": 20,
           "rl.checkpoint_every": 20, "rl.rewards": "step_hit=1,global_path=1"}


@pytest.fixture(scope="module")
def sft_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sft"))
  run.run(test_run.tiny_config(), workdir)
  return workdir


def rl_rewards(workdir):
  return {r["step"]: r["train/reward"] for r in
          metric_writer.read_metrics(f"{workdir}/rl") if "train/reward" in r}


def test_rl_run_raises_the_reward_and_resumes_to_the_same_state(sft_workdir, tmp_path):
  full, split = str(tmp_path / "full"), str(tmp_path / "split")
  keys = dict(RL_KEYS, **{"rl.init_from": sft_workdir})
  results = run.run(test_run.tiny_config(**keys), full)
  reward = rl_rewards(full)
  # rl.validate_at_start: the SFT model is scored at step 0 and competes for the best,
  # so the kept checkpoint is never below it on validation.
  val = {r["step"]: r["val/ndcg@10"] for r in metric_writer.read_metrics(f"{full}/rl")
         if "val/ndcg@10" in r}
  assert sorted(val) == [0, 20, 40]
  assert val[results["rl/train/best_step"]] == max(val.values())
  assert sorted(reward) == [10, 20, 30, 40]
  assert reward[40] > reward[10]
  for split_name in ("val", "test"):  # the SFT row and the RL row, one table
    assert 0 <= results[f"{split_name}/recall@10"] <= 1
    assert 0 <= results[f"rl/{split_name}/recall@10"] <= 1
  assert results["rl/train/steps"] == 40
  assert "+ GRPO" in (tmp_path / "full" / "results.md").read_text()
  # The SFT run's checkpoints are untouched; the RL ones live under rl/.
  assert test_run.last_params(f"{full}/rl")[0] == 40
  # Stopped at step 20 (as a kill after its checkpoint), then the same command again.
  assert run.run(test_run.tiny_config(**keys, **{"rl.stop_at_step": 20}), split) == {}
  assert test_run.last_params(f"{split}/rl")[0] == 20
  resumed = run.run(test_run.tiny_config(**keys), split)
  assert rl_rewards(split) == reward
  for a, b in zip(test_run.last_params(f"{full}/rl")[1],
                  test_run.last_params(f"{split}/rl")[1]):
    np.testing.assert_array_equal(a, b)
  assert resumed["rl/test/recall@10"] == results["rl/test/recall@10"]
  saved = json.loads((tmp_path / "split" / "config.json").read_text())
  assert saved["init"]["from_workdir"] == sft_workdir  # rl.init_from, resolved


def test_rl_stage_errors_name_the_problem(tmp_path):
  with pytest.raises(ValueError, match="rl.group_size=1"):
    run.run(test_run.tiny_config(**{"rl.enabled": True, "rl.group_size": 1}),
            str(tmp_path / "a"))
  with pytest.raises(ValueError, match="unknown reward"):
    run.run(test_run.tiny_config(**{"rl.enabled": True, "rl.rewards": "nope=1"}),
            str(tmp_path / "b"))
  with pytest.raises(ValueError, match="set config.rl.rollout='beam'"):
    run.run(test_run.tiny_config(**{"rl.enabled": True, "rl.rewards": "global_path,rank"}),
            str(tmp_path / "d"))
  with pytest.raises(ValueError, match="rl.examples='first'"):
    run.run(test_run.tiny_config(**{"rl.enabled": True, "rl.examples": "first"}),
            str(tmp_path / "f"))
  with pytest.raises(ValueError, match="rl.rollout='beams'"):
    run.run(test_run.tiny_config(**{"rl.enabled": True, "rl.rollout": "beams"}),
            str(tmp_path / "e"))
  with pytest.raises(ValueError, match="scores items directly"):
    run.run(test_run.tiny_config(**{"rl.enabled": True, "model.name": "sasrec"}),
            str(tmp_path / "c"))
