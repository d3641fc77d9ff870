"""SIDReasoner's stages on the random tiny LM: the reward on hand-made rollouts,
thinking rollouts whose SID is parsed and constrained, the GRPO loss's
log-probabilities, a GRPO step that raises the reward, and the three stages plus the
evaluation through the real entry point (resumable, each stage on its own)."""

import json
import os
import pathlib
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from s2gr_jax import decoding
from s2gr_jax import parallel
from s2gr_jax import train as train_lib
from s2gr_jax.lm import corpus
from s2gr_jax.lm import gemma
from s2gr_jax.lm import generate
from s2gr_jax.lm import lm_grpo
from s2gr_jax.lm import sft
from s2gr_jax.lm import sid_vocab
from s2gr_jax.lm import tokenizer as tok_lib
from s2gr_jax.rl import rewards as rewards_lib
from s2gr_jax.sid import table as table_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _table():
  # items 1..6 over 3 levels of 4 codes; items 5 and 6 share every semantic code
  codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [2, 3, 1], [2, 3, 1]])
  return table_lib.SidTable.from_semantic_codes(codes, (4, 4, 4))


def test_the_reward_on_hand_made_rollouts():
  """SIDReasoner's: 0 when the first level misses, 0.25 / 0.5 / 1.0 for 1 / 2 / 3
  levels, + 0.1 for a valid SID; an item sharing all semantic codes counts in full."""
  table = _table()
  tables = rewards_lib.RewardTables.from_table(table)
  items = jnp.asarray([[1, 2, 3, 4, 0, 6]])  # target 1 = (0,0,0); 0 = no item
  got = np.asarray(lm_grpo.prefix_reward(items, jnp.asarray([1]), tables))[0]
  np.testing.assert_allclose(got, [1.1, 0.6, 0.35, 0.1, 0.0, 0.1], atol=1e-6)
  got = np.asarray(lm_grpo.prefix_reward(jnp.asarray([[6, 5]]), jnp.asarray([5]),
                                         tables))[0]
  np.testing.assert_allclose(got, [1.1, 1.1], atol=1e-6)


def test_sid_prompt_cuts_each_thought_at_its_first_close():
  close, sep = 9, (7, 7)
  prompt = jnp.asarray([[0, 5, 6], [4, 5, 6]])
  valid = jnp.asarray([[False, True, True], [True, True, True]])
  think = jnp.asarray([[3, close, 0, 0], [3, 3, 3, 3]])  # row 1 never closes
  tokens, v, sampled = lm_grpo.sid_prompt(prompt, valid, think, close, sep)
  assert tokens.shape == (2, 3 + 4 + 1 + 2)
  np.testing.assert_array_equal(
      v, [[0, 1, 1, 1, 1, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(
      sampled, [[0, 0, 0, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1, 0, 0, 0]])
  assert int(tokens[1, 7]) == close and int(tokens[0, 7]) == tok_lib.PAD  # forced close


def _tiny_setup(seed=0):
  table = _table()
  tok = tok_lib.Tokenizer(*tok_lib.byte_vocab())
  cfg = gemma.GemmaConfig.tiny(vocab_size=tok.base_size)
  model = gemma.Gemma3(cfg, rngs=nnx.Rngs(seed))
  vocab = sid_vocab.SidVocab.for_table(table, tok, model)
  open_id, close_id = tok.add_tokens([corpus.THINK_OPEN, corpus.THINK_CLOSE])
  sid_vocab.grow_embedding(model, tok.vocab_size)
  return table, tok, model, vocab, close_id


def test_a_thinking_rollouts_sid_is_a_catalogue_item_and_parses_back():
  table, tok, model, vocab, close = _tiny_setup()
  prompt = tok.encode(tok.chat_prompt("which next?") + corpus.THINK_OPEN, add_bos=True)
  tokens, valid = generate.pad_prompts([prompt] * 16)
  index = decoding.make_index(table, "prefix")
  out = jax.jit(lambda m, t, v, k: lm_grpo.rollout(
      m, jnp.asarray(vocab.level_ids), index, t, v, k, think_tokens=5, think_close=close,
      separator=tuple(tok.encode("\n\n"))))(model, tokens, valid, jax.random.key(3))
  items = np.asarray(out.items)
  assert ((items >= 1) & (items <= table.num_items)).all()
  lookup = table.lookup()
  for row, item in enumerate(items):
    text = tok.decode(np.asarray(out.tokens[row])[np.asarray(out.valid[row])])
    after = text.rsplit(corpus.THINK_CLOSE, 1)[1]  # the SID follows the last </think>
    assert vocab.parse(after) == lookup[item].tolist()
    ids = np.asarray(out.tokens[row, -table.num_levels:])
    np.testing.assert_array_equal(vocab.codes(ids), lookup[item])
  assert np.asarray(out.sampled)[:, -table.num_levels:].all()


def test_text_init_gives_each_sid_token_its_items_title_row_and_mean_init_one_row():
  from s2gr_jax.lm import reasoner  # pylint: disable=g-import-not-at-top
  table = _table()
  item_text = [{"title": t} for t in ("he", "hello", "ll", "llo", "hello he", "he he")]
  rcfg = ml_collections.ConfigDict(dict(lm="tiny", lora_rank=0, lora_alpha=1.0,
                                        dtype="float32", remat=False, sid_init="mean"))
  mean = reasoner.make_setup(rcfg, table, item_text=item_text)
  rcfg.sid_init = "text"
  text = reasoner.make_setup(rcfg, table, item_text=item_text)
  ids = text.vocab.all_ids()
  np.testing.assert_array_equal(ids, mean.vocab.all_ids())
  m_rows = np.asarray(mean.base_model().embed.embedding[...])
  t_model = text.base_model()
  t_rows = np.asarray(t_model.embed.embedding[...])
  base = text.base_vocab
  np.testing.assert_array_equal(t_rows[:base], m_rows[:base])  # pretrained rows kept
  np.testing.assert_array_equal(t_rows[base:][~np.isin(np.arange(base, len(t_rows)), ids)],
                                m_rows[base:][~np.isin(np.arange(base, len(m_rows)), ids)])
  assert np.unique(m_rows[ids], axis=0).shape[0] == 1  # 'mean': one shared row
  codes = table.lookup()[1:]
  texts = [text.tok.encode(t["title"]) for t in item_text]
  want = sid_vocab.rows_from_text(m_rows[:base], codes, text.vocab.sizes, texts)
  np.testing.assert_allclose(t_rows[ids], want, rtol=1e-6)
  # level 0: codes 0, 1 and 2 are used by different items, so their rows differ
  assert np.unique(t_rows[ids[:3]], axis=0).shape[0] == 3
  # the model with the text rows still runs, and a second base_model reuses the rows
  assert t_model(jnp.asarray([ids[:3]])).shape == (1, 3, text.cfg.vocab_size)
  np.testing.assert_array_equal(np.asarray(text.base_model().embed.embedding[...]), t_rows)
  # think_init='turn' (at the start of stage 2): <think>, </think> copy <start_of_turn>,
  # <end_of_turn>; the rest of the table is unchanged
  rcfg.think_init = "turn"
  turn = reasoner.make_setup(rcfg, table, item_text=item_text)
  model = turn.base_model()
  np.testing.assert_array_equal(np.asarray(model.embed.embedding[...]), t_rows)
  turn.copy_turn_rows(model)
  u_rows = np.asarray(model.embed.embedding[...])
  start, end = (turn.tok.encode(x) for x in (tok_lib.START_OF_TURN, tok_lib.END_OF_TURN))
  np.testing.assert_array_equal(u_rows[[turn.think_open, turn.think_close]],
                                t_rows[start + end])
  assert not np.array_equal(t_rows[turn.think_close], t_rows[end[0]])  # was the mean
  keep = ~np.isin(np.arange(len(u_rows)), [turn.think_open, turn.think_close])
  np.testing.assert_array_equal(u_rows[keep], t_rows[keep])


def test_sequence_log_probs_are_the_full_forward_passs_at_the_sampled_tokens():
  _, tok, model, _, close = _tiny_setup()
  prompt = jnp.asarray([[0, 2, 10, 11], [2, 12, 13, 14]])
  valid = jnp.asarray([[False, True, True, True], [True, True, True, True]])
  think = jnp.asarray([[20, close, 30], [21, 22, 23]])
  tokens, v, sampled = lm_grpo.sid_prompt(prompt, valid, think, close, (7,))
  lp = np.asarray(lm_grpo.sequence_log_probs(model, tokens, v, chunk=5))
  for row in range(2):
    keep = np.asarray(v[row])
    seq = np.asarray(tokens[row])[keep]
    full = np.asarray(jax.nn.log_softmax(model(jnp.asarray(seq)[None])[0], -1))
    want = {int(np.flatnonzero(keep)[j + 1]): full[j, seq[j + 1]]
            for j in range(len(seq) - 1)}
    for t in np.flatnonzero(np.asarray(sampled[row])):
      np.testing.assert_allclose(lp[row, t - 1], want[int(t)], atol=1e-4)


def test_a_grpo_step_moves_the_policy_towards_rewarded_sids():
  """With one prompt whose target is item 4, GRPO steps raise the mean reward."""
  table, tok, model, vocab, close = _tiny_setup(seed=1)
  cfg = model.cfg
  prompt = tok.encode(tok.chat_prompt("which next?") + corpus.THINK_OPEN, add_bos=True)
  tokens, valid = generate.pad_prompts([prompt] * 2)
  batch = {"prompt_tokens": tokens, "prompt_valid": valid,
           "target_item": jnp.asarray([4, 4], jnp.int32)}
  settings = lm_grpo.LmGrpoSettings(group=8, think_tokens=2, kl_coef=0.001,
                                    micro_batch=8, think_close=close,
                                    separator=tuple(tok.encode("\n\n")), chunk=64)
  graphdef, model_graphdef, state = train_lib.create_state(
      lambda rngs: gemma.Gemma3(cfg, rngs=rngs), sft.make_optimizer(3e-2, 1, 100), 0,
      parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1,
                                                        rules=()))), wrt=nnx.Param)
  m, opt = nnx.merge(graphdef, state)
  sft.copy_weights(m, model)
  state = nnx.split((m, opt))[1]
  ref = jax.tree.map(lambda x: x.copy(), state[0])
  step = lm_grpo.make_step(graphdef, model_graphdef, settings, nnx.Param)
  index = decoding.make_index(table, "prefix")
  tables = rewards_lib.RewardTables.from_table(table)
  rewards = []
  for _ in range(25):
    state, metrics = step(state, batch, jax.random.key(0), ref, index, tables,
                          jnp.asarray(vocab.level_ids))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["kl"]) >= -1e-6
    rewards.append(float(metrics["reward"]))
  assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.2, rewards


def _main(*args):
  proc = subprocess.run([sys.executable, "-m", "s2gr_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, env=dict(os.environ))
  if proc.returncode != 0:
    raise AssertionError(f"entry point failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return proc


def test_three_stages_and_the_evaluation_through_the_entry_point(tmp_path):
  workdir = str(tmp_path / "sr")
  # (one device: the tiny stages' batches of 2-4 rows do not split over 8)
  base = ["--config", "configs/sidreasoner_scientific.py:tiny", "--workdir", workdir,
          "--config.mesh.data=1"]
  # stage 1, stopped half way and resumed
  _main(*base, "--config.stage=align", "--config.reasoner.align.stop_at_step=3")
  assert not os.path.exists(os.path.join(workdir, "align", "summary.json"))
  _main(*base, "--config.stage=align")
  align = json.load(open(os.path.join(workdir, "align", "summary.json")))
  assert align["steps"] == 6 and align["from"] == "base"
  assert set(align["streams"]) == {"sid_history_to_sid", "title_to_sid", "sid_to_title"}
  losses = [json.loads(l) for l in open(os.path.join(workdir, "align", "metrics.jsonl"))]
  val = [r["val/loss"] for r in losses if "val/loss" in r]
  assert val[-1] < val[0]  # the alignment loss falls
  # stage 2 with the think tokens started at the turn tokens' rows
  proc = _main(*base, "--config.stage=activate", "--config.reasoner.think_init=turn")
  assert "start as copies of the turn tokens' rows" in proc.stdout + proc.stderr
  activate = json.load(open(os.path.join(workdir, "activate", "summary.json")))
  assert activate["from"] == "align" and activate["steps"] == 4
  _main(*base, "--config.stage=rl")
  rl = json.load(open(os.path.join(workdir, "rl", "summary.json")))
  assert rl["from"] == "activate" and rl["steps"] == 2
  rl_metrics = [json.loads(l) for l in open(os.path.join(workdir, "rl", "metrics.jsonl"))]
  assert any("train/reward" in r for r in rl_metrics)
  proc = _main(*base, "--config.stage=eval")
  results = json.load(open(os.path.join(workdir, "results.json")))
  for name in ("base", "align", "activate", "rl"):
    for mode in ("plain", "think"):
      for protocol in ("spec", "sidr"):
        assert 0.0 <= results[f"{name}/{mode}/{protocol}/test/recall@20"] <= 1.0
  assert "rows/popularity/spec/test/recall@10" in results
  assert "rows/history_transitions/sidr/val/ndcg@10" in results
  report = open(os.path.join(workdir, "results.md")).read()
  assert "+ stage 3 (GRPO), thinking" in report and "| last_item |" in report
  thoughts = [json.loads(l) for l in open(os.path.join(workdir, "eval_thoughts.jsonl"))]
  assert thoughts and all(1 <= t["target"] for t in thoughts)
  assert "eval rl think sidr test" in proc.stderr + proc.stdout

  # An eval killed half way resumes from the rows it kept: a kept row is read back (a
  # marked value shows it was not scored again), a missing row or one with a stale
  # fingerprint is scored again and gives the same figures.
  rows_path = os.path.join(workdir, "eval_rows.json")
  rows = json.load(open(rows_path))
  assert len(rows) == 4 * 2 * 2 * 2  # models x modes x protocols x splits
  first = {k: v["metrics"] for k, v in rows.items()}
  del rows["rl/think/sidr/test"]
  rows["rl/plain/sidr/val"]["fingerprint"] = "stale"
  rows["rl/plain/sidr/test"]["metrics"]["recall@20"] = 0.123456
  json.dump(rows, open(rows_path, "w"))
  os.remove(os.path.join(workdir, "results.json"))
  proc = _main(*base, "--config.stage=eval", "--config.reasoner.eval.models=rl",
               "--config.reasoner.eval.protocols=sidr")
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["rl/plain/sidr/test/recall@20"] == 0.123456
  for key in ("rl/think/sidr/test", "rl/plain/sidr/val"):
    assert {k: results[f"{key}/{k}"] for k in first[key]} == first[key]
  log = proc.stderr + proc.stdout
  assert "eval rl/plain/sidr/test: scored by an earlier" in log
  assert "eval rl/think/sidr/test: scored by an earlier" not in log


def test_a_damaged_eval_rows_file_is_set_aside_not_trusted(tmp_path, caplog):
  from s2gr_jax.lm import reasoner  # pylint: disable=g-import-not-at-top
  path = tmp_path / reasoner.ROWS_FILE
  assert not reasoner._read_rows(path)
  path.write_text('{"base/plain/spec/test": {"fingerprint": "x", "metr')  # cut short
  with caplog.at_level("WARNING"):
    assert not reasoner._read_rows(path)
  assert "scored again" in caplog.text and str(path) in caplog.text
  reasoner._write_rows(path, {"k": {"fingerprint": "f"}})
  assert reasoner._read_rows(path) == {"k": {"fingerprint": "f"}}
  assert not (tmp_path / (reasoner.ROWS_FILE + ".tmp")).exists()


def test_bad_reasoner_settings_fail_naming_the_key():
  sys.path.insert(0, str(ROOT / "configs"))
  import sidreasoner_scientific as recipe  # pylint: disable=g-import-not-at-top
  from s2gr_jax import config_lib  # pylint: disable=g-import-not-at-top
  c = recipe.get_config("tiny")
  c.stage = "train"
  with pytest.raises(ValueError, match="config.stage='train'"):
    config_lib.validate(c)
  c = recipe.get_config("tiny")
  c.reasoner.align.streams = "sid_history_to_sid,nonsense"
  with pytest.raises(ValueError, match="reasoner.align.streams.*nonsense"):
    config_lib.validate(c)
  c = recipe.get_config("tiny")
  c.reasoner.eval.modes = "plain,dream"
  with pytest.raises(ValueError, match="reasoner.eval.modes.*dream"):
    config_lib.validate(c)
  c = recipe.get_config("tiny")
  c.reasoner.sid_init = "random"
  with pytest.raises(ValueError, match="reasoner.sid_init='random'"):
    config_lib.validate(c)
  c = recipe.get_config("tiny")
  c.reasoner.rl.micro_batch = 3
  with pytest.raises(ValueError, match="micro_batch=3"):
    config_lib.validate(c)
  c = recipe.get_config("tiny")
  c.reasoner.activate.rationale_style = "poems"
  with pytest.raises(ValueError, match="reasoner.activate.rationale_style='poems'"):
    config_lib.validate(c)


@pytest.mark.parametrize("style", corpus.RATIONALE_STYLES)
def test_stage_2_validates_on_rationales_of_the_style_it_trains_on(monkeypatch, style):
  from s2gr_jax.lm import reasoner  # pylint: disable=g-import-not-at-top
  import test_corpus  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(reasoner, "_users", lambda ctx, n, salt=0: np.arange(1))
  monkeypatch.setattr(reasoner, "_histories",
                      lambda ctx, split, users, max_history: ([[1, 2, 3]], [6]))
  config = ml_collections.ConfigDict(dict(reasoner=dict(
      max_history=10, activate=dict(rationale_style=style))))
  ctx = type("Ctx", (), dict(config=config, dataset=type(
      "Data", (), dict(item_text=test_corpus.item_text()))()))()
  setup = type("Setup", (), dict(sid_text=staticmethod(test_corpus.sid_text)))()
  (sample,) = reasoner._val_samples(ctx, setup, True, 1)  # pylint: disable=protected-access
  trained = corpus.reasoning_samples([[1, 2, 3, 6, 7, 8]], test_corpus.item_text(),
                                     test_corpus.sid_text, style=style)[2]
  assert trained.answer.startswith(("<think>\nRecent: ", "<think>\nThe most recent"))
  assert sample.answer == trained.answer
