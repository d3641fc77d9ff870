"""Gemma 3 in Flax NNX on a random tiny config of the same architecture: cached decoding
against the full forward pass, GGUF round trip, tokenizer, SID vocabulary, free and
catalogue-constrained generation; and the recorded reference of the real 270M model."""

import json
import os

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from s2gr_jax import decoding
from s2gr_jax import errors
from s2gr_jax import lm
from s2gr_jax import metric_writer
from s2gr_jax import parallel
from s2gr_jax.lm import gemma
from s2gr_jax.lm import generate
from s2gr_jax.lm import gguf_io
from s2gr_jax.lm import sft
from s2gr_jax.lm import sid_vocab
from s2gr_jax.lm import tokenizer as tok_lib
from s2gr_jax.sid import table as table_lib

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "gemma3_270m_reference.json")


def tiny(seed=0, **overrides):
  return gemma.Gemma3(gemma.GemmaConfig.tiny(**overrides), rngs=nnx.Rngs(seed))


byte_vocab = tok_lib.byte_vocab


def test_cached_decoding_equals_the_full_forward_pass():
  model = tiny()  # window 4, layers 0, 1 local and 2 global
  tokens = jax.random.randint(jax.random.key(0), (3, 13), 0, 512)
  valid = jnp.ones((3, 13), bool).at[0, :4].set(False).at[1, :1].set(False)
  full = model(tokens, valid)
  hidden, cache = model.prefill(tokens[:, :5], valid[:, :5], 13)
  steps = [model.logits(hidden)]
  for t in range(5, 12):  # one token at a time, then a chunk of two
    h, cache = model.decode(tokens[:, t:t + 1], cache)
    steps.append(model.logits(h[:, 0]))
  np.testing.assert_allclose(np.stack(steps, 1), full[:, 4:12], atol=2e-4)
  h, cache2 = model.prefill(tokens[:, :9], valid[:, :9], 13)
  h2, _ = model.decode(tokens[:, 9:11], cache2)
  np.testing.assert_allclose(model.logits(h2), full[:, 9:11], atol=2e-4)
  # The sliding window matters: a global-only model gives other logits.
  other = tiny(global_every=1)
  assert not np.allclose(other(tokens, valid), full, atol=1e-3)
  # Left padding changes nothing for the real tokens: row 0 equals its unpadded self.
  alone = model(tokens[:1, 4:])
  np.testing.assert_allclose(alone[0], full[0, 4:], atol=2e-4)


def test_gguf_written_by_the_tests_loads_the_parameters_written(tmp_path):
  model = tiny(seed=3)
  written = gguf_io.params_of(model)
  pieces, scores, types = byte_vocab()
  path = tmp_path / "tiny.gguf"
  cfg = gemma.GemmaConfig.tiny()
  gguf_io.write_gguf(path, cfg, written, {"tokens": pieces, "scores": scores,
                                          "token_type": types})
  # (the tiny layer pattern is not in GGUF metadata: Gemma 3's is fixed)
  got_cfg, got = gguf_io.load_gguf(path, global_every=cfg.global_every,
                                   local_base=cfg.local_base)
  assert (got_cfg.d_model, got_cfg.num_layers, got_cfg.num_kv_heads, got_cfg.vocab_size,
          got_cfg.sliding_window) == (32, 3, 1, 512, 4)
  flat_w = jax.tree_util.tree_leaves_with_path(written)
  flat_g = dict(jax.tree_util.tree_leaves_with_path(got))
  assert len(flat_w) == len(flat_g)
  for key, value in flat_w:
    np.testing.assert_array_equal(flat_g[key], value)
  loaded = lm.build(got_cfg, got)
  tokens = jnp.arange(10)[None]
  np.testing.assert_allclose(loaded(tokens), model(tokens), atol=1e-5)
  assert tok_lib.Tokenizer.from_gguf(path).encode("hello") == [pieces.index("hello")]


def test_gguf_errors_name_the_problem(tmp_path):
  with pytest.raises(errors.MissingFileError, match="no such GGUF"):
    gguf_io.load_gguf(tmp_path / "none.gguf")
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"not a gguf file at all")
  with pytest.raises(errors.DataError, match="not a readable GGUF"):
    gguf_io.load_gguf(bad)
  with pytest.raises(ValueError, match="shape"):
    gguf_io.set_params(tiny(), gguf_io.params_of(tiny(d_ff=48)))


def test_tokenizer_round_trips_and_parses_special_and_added_tokens():
  tok = tok_lib.Tokenizer(*byte_vocab())
  for text in ["hello world", "  two  spaces\n\nand tabs\t", "naïve café 東京 🙂",
               "the end", ""]:
    assert tok.decode(tok.encode(text)) == text
  assert tok.encode("hello") == [tok.token_id("hello")]
  prompt = tok.chat_prompt("hi")
  ids = tok.encode(prompt, add_bos=True)
  assert ids[:2] == [tok_lib.BOS, tok.token_id("<start_of_turn>")]
  assert ids.count(tok.token_id("<end_of_turn>")) == 1
  assert tok.decode(ids[1:]) == prompt
  assert "<start_of_turn>" not in tok.decode(ids, skip_special=True)
  # Without parse_special the markers are plain text.
  assert tok.token_id("<start_of_turn>") not in tok.encode(prompt, parse_special=False)
  new = tok.add_tokens(["<a_0>", "<a_1>"])
  assert new == [tok.base_size, tok.base_size + 1] and tok.vocab_size == tok.base_size + 2
  assert tok.encode("x<a_1>hello") == tok.encode("x") + [new[1], tok.token_id("hello")]
  with pytest.raises(ValueError, match="already"):
    tok.add_tokens(["<a_0>"])


def test_sid_vocabulary_maps_codes_and_grows_the_tied_embedding():
  tok = tok_lib.Tokenizer(*byte_vocab())
  model = tiny(vocab_size=tok.vocab_size)
  old = np.asarray(model.embed.embedding[...])
  base = tok.vocab_size
  vocab = sid_vocab.SidVocab.add_to(tok, (4, 3, 2), model)
  assert tok.vocab_size == base + 9 == model.embed.embedding.shape[0]
  new_rows = np.asarray(model.embed.embedding[...])[base:]
  np.testing.assert_allclose(new_rows, np.repeat(old.mean(0, keepdims=True), len(new_rows),
                                                 0), rtol=1e-5, atol=1e-7)
  codes = np.array([[3, 2, 1], [0, 0, 0]])
  ids = vocab.ids(codes)
  np.testing.assert_array_equal(vocab.codes(ids), codes)
  assert vocab.text([3, 2, 1]) == "<a_3><b_2><c_1>"
  assert tok.encode(vocab.text([3, 2, 1])) == ids[0].tolist()
  assert vocab.parse("I think </think> <a_3><b_2><c_1>\n") == [3, 2, 1]
  assert vocab.parse("<a_3><c_1>") is None and vocab.parse("<a_9><b_0><c_0>") is None
  with pytest.raises(ValueError, match="not SID tokens"):
    vocab.codes(np.array([[ids[0, 1], ids[0, 1], ids[0, 2]]]))
  logits = model(jnp.asarray(ids))  # the head grew with the embedding
  assert logits.shape == (2, 3, tok.vocab_size)


def test_sid_rows_from_text_are_the_rescaled_mean_title_rows_of_each_codes_items():
  table = np.array([[3.0, 0.0], [0.0, 4.0], [1.0, 1.0], [2.0, 2.0]], np.float32)
  scale = np.linalg.norm(table, axis=1).mean()
  codes = np.array([[0, 1], [0, 0], [1, 0]])  # 3 items, 2 levels of 3 and 2 codes
  texts = [[0, 0, 1], [1], []]  # item 2 has no text
  rows = sid_vocab.rows_from_text(table, codes, (3, 2), texts)
  assert rows.shape == (5, 2)
  item0 = (2 * table[0] + table[1]) / 3
  item1 = table[1]
  def unit(v):
    return v / np.linalg.norm(v) * scale
  # level 0: code 0 = items 0 and 1; code 1 = item 2 only (no text); code 2 unused
  np.testing.assert_allclose(rows[0], unit((item0 + item1) / 2), rtol=1e-5)
  np.testing.assert_allclose(rows[1], table.mean(0), rtol=1e-5)
  np.testing.assert_allclose(rows[2], table.mean(0), rtol=1e-5)
  # level 1: code 0 = item 1 (item 2 has no text); code 1 = item 0
  np.testing.assert_allclose(rows[3], unit(item1), rtol=1e-5)
  np.testing.assert_allclose(rows[4], unit(item0), rtol=1e-5)
  with pytest.raises(ValueError, match="outside the base vocabulary"):
    sid_vocab.rows_from_text(table, codes, (3, 2), [[0], [7], []])
  with pytest.raises(ValueError, match="do not match"):
    sid_vocab.rows_from_text(table, codes[:2], (3, 2), texts)
  # written at the SID ids of a grown model, the other rows untouched
  tok = tok_lib.Tokenizer(*byte_vocab())
  model = tiny(vocab_size=tok.vocab_size)
  vocab = sid_vocab.SidVocab.add_to(tok, (3, 2), model)
  before = np.asarray(model.embed.embedding[...])
  new = np.arange(5 * before.shape[1], dtype=np.float32).reshape(5, -1)
  sid_vocab.set_rows(model, vocab.all_ids(), new)
  after = np.asarray(model.embed.embedding[...])
  np.testing.assert_array_equal(after[vocab.all_ids()], new)
  assert vocab.all_ids().tolist() == [tok.token_id(t) for t in (
      "<a_0>", "<a_1>", "<a_2>", "<b_0>", "<b_1>")]
  keep = np.setdiff1d(np.arange(len(after)), vocab.all_ids())
  np.testing.assert_array_equal(after[keep], before[keep])


def test_greedy_generation_and_beam_search_agree_with_the_full_forward_pass():
  model = tiny(seed=1)
  tokens, valid = generate.pad_prompts([[5, 6, 7, 8], [9, 10]])
  out = generate.generate(model, tokens, valid, jax.random.key(0), max_new_tokens=6,
                          eos=-1)
  for row in range(2):  # each token is the argmax of the full pass over what came before
    seq = [t for t, ok in zip(tokens[row].tolist(), valid[row].tolist()) if ok]
    for t in out[row].tolist():
      assert t == int(jnp.argmax(model(jnp.asarray([seq]))[0, -1]))
      seq.append(t)
  seqs, scores = generate.beam_search(model, tokens, valid, beam=1, max_new_tokens=6,
                                      eos=-1)
  np.testing.assert_array_equal(seqs[:, 0], out)
  seqs4, scores4 = generate.beam_search(model, tokens, valid, beam=4, max_new_tokens=6,
                                        eos=-1)
  assert (np.asarray(scores4[:, 0]) >= np.asarray(scores[:, 0]) - 1e-4).all()
  assert (np.diff(np.asarray(scores4), axis=1) <= 1e-6).all()  # best first
  # A beam's score is the summed log-probability of its tokens.
  seq = [5, 6, 7, 8] + seqs4[0, 2].tolist()
  lp = jax.nn.log_softmax(model(jnp.asarray([seq]))[0], -1)
  want = sum(float(lp[3 + i, t]) for i, t in enumerate(seqs4[0, 2].tolist()))
  assert float(scores4[0, 2]) == pytest.approx(want, abs=1e-3)
  sampled = generate.generate(model, tokens, valid, jax.random.key(1), max_new_tokens=6,
                              greedy=False, temperature=2.0, eos=-1)
  assert sampled.shape == (2, 6)


def test_constrained_beam_search_returns_catalogue_sids_and_the_brute_force_ranking():
  rng = np.random.default_rng(0)
  codes = np.unique(rng.integers(0, [4, 3, 3], size=(20, 3)), axis=0)
  table = table_lib.SidTable.from_semantic_codes(codes, (4, 3, 3))
  tok = tok_lib.Tokenizer(*byte_vocab())
  model = tiny(seed=2, vocab_size=tok.vocab_size)
  vocab = sid_vocab.SidVocab.for_table(table, tok, model)
  prompts = [tok.encode("hello world<start_of_turn>"), tok.encode("the<end_of_turn>")]
  tokens, valid = generate.pad_prompts(prompts)
  batch = {"prompt_tokens": tokens, "prompt_valid": valid}
  gen = generate.SidGenerator(model, vocab.level_ids)
  index = decoding.make_index(table, "prefix")
  n = table.num_items
  items, scores = jax.jit(lambda g, b: decoding.recommend(g, b, index, beam=n))(gen, batch)
  lookup = table.lookup()
  for row, prompt in enumerate(prompts):
    got = np.asarray(items[row])
    assert sorted(got.tolist()) == list(range(1, n + 1))  # every item once, nothing else
    # Brute force: each item's SID tokens scored by the full forward pass.
    brute = []
    for item in range(1, n + 1):
      sid = vocab.ids(lookup[item][None])[0].tolist()
      lp = jax.nn.log_softmax(model(jnp.asarray([prompt + sid]))[0], -1)
      brute.append(sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(sid)))
    np.testing.assert_allclose(np.asarray(scores[row]),
                               np.sort(brute)[::-1], atol=1e-3)
    # the items in the order returned have the brute-force scores, sorted (ties aside)
    np.testing.assert_allclose(np.asarray(brute)[got - 1], np.sort(brute)[::-1], atol=1e-3)
  small, _ = decoding.recommend(gen, batch, index, beam=3)
  assert np.isin(np.asarray(small), np.arange(1, n + 1)).all()


@pytest.mark.slow
def test_the_real_model_matches_its_recorded_llama_cpp_reference():
  """Gemma 3 270M (fetched on first use) against the figures ``lm/reference.py``
  recorded from llama.cpp: token ids equal, the same top-5 next tokens, logits close."""
  with open(REFERENCE) as f:
    ref = json.load(f)
  model, tok = lm.load_pretrained()
  for case in ref["tokenize"]:
    assert tok.encode(case["text"]) == case["ids"], case["text"]
  forward = jax.jit(lambda m, t: m(t)[0, -1])
  for case in ref["next_token"]:
    logits = np.asarray(forward(model, jnp.asarray([case["ids"]])))
    top = np.argsort(-logits)[:5].tolist()
    assert set(top) == set(case["top_ids"]), case["prompt"]
    np.testing.assert_allclose(logits[case["top_ids"]], case["top_logits"],
                               atol=ref["logit_tolerance"])


# --- supervised fine-tuning -------------------------------------------------------------

def test_completion_masks_cover_exactly_the_answer_tokens():
  ex = [sft.Example((2, 10, 11, 12), (20, 21, 1)), sft.Example((2, 30), (40,))]
  b = sft.pack(ex, seq_len=8)
  # row 0: inputs 2 10 11 12 20 21, targets 10 11 12 20 21 1: the last three are answer
  np.testing.assert_array_equal(b["tokens"][0, :6], [2, 10, 11, 12, 20, 21])
  np.testing.assert_array_equal(b["targets"][0, :6], [10, 11, 12, 20, 21, 1])
  np.testing.assert_array_equal(b["loss_mask"][0], [0, 0, 0, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(b["loss_mask"][1], [0, 1, 0, 0, 0, 0, 0, 0])
  assert b["valid"].sum(1).tolist() == [6, 2]
  # Too long: cut from the left, the answer kept whole.
  long = sft.pack([sft.Example(tuple(range(2, 20)), (30, 31))], seq_len=4)
  np.testing.assert_array_equal(long["targets"][0], [18, 19, 30, 31])
  np.testing.assert_array_equal(long["loss_mask"][0], [0, 0, 1, 1])


def test_completion_loss_is_the_masked_mean_of_the_full_logits():
  model = tiny(seed=4)
  ex = [sft.Example((2, 10, 11), (20, 21)), sft.Example((2, 30, 31, 32), (40, 41, 42))]
  b = {k: jnp.asarray(v) for k, v in sft.pack(ex, seq_len=7).items()}
  loss, count = sft.completion_loss(model, b, chunk=4)  # chunks that do not divide B*T
  lp = jax.nn.log_softmax(model(b["tokens"], b["valid"]), -1)
  nll = -jnp.take_along_axis(lp, b["targets"][..., None], -1)[..., 0]
  want = float((nll * b["loss_mask"]).sum() / b["loss_mask"].sum())
  assert float(count) == 5 and float(loss) == pytest.approx(want, rel=1e-5)
  # Bucketed: the head at the answer positions only (loss_at), padded with -1 to a
  # multiple of bucket or of the coarser loss_bucket; the loss is the same.
  for bucket, loss_bucket, size in ((4, 0, 8), (4, 16, 16)):
    packed = sft.pack(ex, seq_len=7, bucket=bucket, loss_bucket=loss_bucket)
    at = packed["loss_at"]
    assert at.shape == (size,) and (at[5:] == -1).all()
    np.testing.assert_array_equal(at[:5], np.flatnonzero(packed["loss_mask"].reshape(-1)))
    got, n = sft.completion_loss(model, {k: jnp.asarray(v) for k, v in packed.items()},
                                 chunk=4)
    assert float(n) == 5 and float(got) == pytest.approx(want, rel=1e-5)


def _reverse_examples(n, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    p = rng.integers(10, 60, size=int(rng.integers(3, 6))).tolist()
    out.append(sft.Example(tuple(p), tuple(p[::-1])))
  return out


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_fine_tuning_lowers_the_loss_and_resumes_to_the_same_state(tmp_path, lora_rank):
  cfg = gemma.GemmaConfig.tiny(lora_rank=lora_rank)
  base = gguf_io.params_of(tiny(seed=5))
  ex = _reverse_examples(40)
  kw = dict(batch_size=8, seq_len=12, lr=3e-3, warmup=2, num_steps=40, log_every=10,
            eval_every=20)
  full, best = sft.fine_tune(cfg, base, ex[:32], ex[32:], str(tmp_path / "full"), **kw)
  losses = [r["train/loss"] for r in metric_writer.read_metrics(str(tmp_path / "full"))
            if "train/loss" in r]
  assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]
  # Killed after step 20 (its checkpoint is saved), then the same call again.
  sft.fine_tune(cfg, base, ex[:32], ex[32:], str(tmp_path / "split"), stop_at_step=20,
                **kw)
  again, _ = sft.fine_tune(cfg, base, ex[:32], ex[32:], str(tmp_path / "split"), **kw)
  for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(again.state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  model = lm.build(cfg, base)
  nnx.update(model, best)
  if lora_rank:  # only the adapters moved
    for key, value in jax.tree_util.tree_leaves_with_path(gguf_io.params_of(model)):
      np.testing.assert_array_equal(value, dict(jax.tree_util.tree_leaves_with_path(
          base))[key])
    assert any(float(jnp.abs(x).max()) > 0 for x in
               jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
  else:
    assert not all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(gguf_io.params_of(model)), jax.tree.leaves(base)))


def test_sft_reads_jsonl_and_names_bad_lines(tmp_path):
  tok = tok_lib.Tokenizer(*byte_vocab())
  good = tmp_path / "a.jsonl"
  good.write_text('{"prompt": "hello", "completion": "hello"}\n\n')
  (ex,) = sft.read_jsonl(str(good), tok, chat=True)
  assert ex.prompt[0] == tok_lib.BOS and ex.completion[-1] == tok.token_id("<end_of_turn>")
  bad = tmp_path / "b.jsonl"
  bad.write_text('{"prompt": "x", "completion": "y"}\n{"prompt": "x"}\n')
  with pytest.raises(errors.DataError, match="b.jsonl:2"):
    sft.read_jsonl(str(bad), tok)
  with pytest.raises(errors.MissingFileError):
    sft.read_jsonl(str(tmp_path / "none.jsonl"), tok)


def test_fine_tuning_gives_the_same_losses_on_one_device_and_sharded_on_eight(tmp_path):
  cfg = gemma.GemmaConfig.tiny()
  base = gguf_io.params_of(tiny(seed=6))
  ex = _reverse_examples(24, seed=1)
  kw = dict(batch_size=8, seq_len=12, lr=3e-3, warmup=2, num_steps=6, log_every=2,
            eval_every=6)
  losses = {}
  for name, shape in (("one", (1, 1, 1)), ("eight", (2, 2, 2))):
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(
        data=shape[0], fsdp=shape[1], tensor=shape[2], rules=())))
    result, _ = sft.fine_tune(cfg, base, ex[:16], ex[16:], str(tmp_path / name),
                              mesh=mesh, **kw)
    losses[name] = [r["train/loss"] for r in metric_writer.read_metrics(
        str(tmp_path / name)) if "train/loss" in r]
    if name == "eight":  # the Gemma matrices really are split over fsdp x tensor
      kernel = result.state[0]["layers"][0]["gate"]["kernel"]
      kernel = getattr(kernel, "value", kernel)
      assert len(kernel.sharding.device_set) == 8
  np.testing.assert_allclose(losses["one"], losses["eight"], rtol=2e-4)


def test_safetensors_checkpoint_in_hugging_face_names_loads(tmp_path):
  from safetensors.numpy import save_file
  model = tiny(seed=7)
  p = gguf_io.params_of(model)
  cfg = gemma.GemmaConfig.tiny()
  hf = {"model.embed_tokens.weight": p["embed"]["embedding"],
        "model.norm.weight": p["final_norm"]["scale"]}
  names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
           "o": "self_attn.o_proj"}
  for i, layer in p["layers"].items():
    pre = f"model.layers.{i}."
    for ours, theirs in names.items():
      hf[pre + theirs + ".weight"] = layer["attn"][ours]["kernel"].T
    hf[pre + "self_attn.q_norm.weight"] = layer["attn"]["q_norm"]["scale"]
    hf[pre + "self_attn.k_norm.weight"] = layer["attn"]["k_norm"]["scale"]
    for ours, theirs in (("pre_attn_norm", "input_layernorm"),
                         ("post_attn_norm", "post_attention_layernorm"),
                         ("pre_ffw_norm", "pre_feedforward_layernorm"),
                         ("post_ffw_norm", "post_feedforward_layernorm")):
      hf[pre + theirs + ".weight"] = layer[ours]["scale"]
    for ours in ("gate", "up", "down"):
      hf[pre + f"mlp.{ours}_proj.weight"] = layer[ours]["kernel"].T
  save_file({k: np.ascontiguousarray(v) for k, v in hf.items()},
            str(tmp_path / "model.safetensors"))
  _, got = gguf_io.load_safetensors(tmp_path, cfg)
  tokens = jnp.arange(12)[None]
  np.testing.assert_allclose(lm.build(cfg, got)(tokens), model(tokens), atol=1e-5)
  with pytest.raises(errors.MissingFileError, match="no \\*.safetensors"):
    gguf_io.load_safetensors(tmp_path / "nothing", cfg)


def test_a_damaged_cached_gguf_is_deleted_with_a_clear_error(tmp_path, monkeypatch):
  from s2gr_jax.lm import weights
  monkeypatch.setenv(weights.DIR_ENV, str(tmp_path))
  bad = tmp_path / weights.GGUF_NAME
  bad.write_bytes(b"\0" * 1000)
  with pytest.raises(errors.DownloadError, match="checksum"):
    weights.fetch_gguf()
  assert not bad.exists()  # so the next call fetches it again
