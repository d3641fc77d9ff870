"""Gemma 3 weights from GGUF (and from safetensors) into ``gemma.Gemma3``'s parameters.

GGUF (llama.cpp's format, read with the ``gguf`` package) stores each tensor in GGML
order: ``dequantize`` gives it in the Hugging Face layout ``[out, in]``; our kernels are
``[in, out]``, so every matrix is transposed. llama.cpp's converter stores each Gemma
RMSNorm weight as ``1 + w`` (it folds the zero-centred ``1 +``), so our ``scale`` is the
stored value minus one. The embedding doubles as the output head (no ``output`` tensor).
Every tensor is checked against the shape the config implies before it is used; a
missing, unexpected or mis-shaped tensor is an error that names it.

``write_gguf`` writes our parameters back (float32, the same names and conventions):
the tests round-trip a random tiny model through it, and it is how a fine-tuned model
goes to llama.cpp.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from s2gr_jax import errors
from s2gr_jax.lm import gemma

ARCH = "gemma3"


def _gguf():
  try:
    import gguf  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # (a dependency of the project: pip install -e .)
    raise ImportError("reading GGUF needs the 'gguf' package (pip install gguf)") from e
  return gguf


def expected_shapes(cfg: gemma.GemmaConfig) -> dict[str, tuple[int, ...]]:
  """GGUF tensor name → shape in the Hugging Face layout, for ``cfg``."""
  d, n, k, h, f = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_ff
  out = {"token_embd.weight": (cfg.vocab_size, d), "output_norm.weight": (d,)}
  for i in range(cfg.num_layers):
    p = f"blk.{i}."
    out.update({p + "attn_q.weight": (n * h, d), p + "attn_k.weight": (k * h, d),
                p + "attn_v.weight": (k * h, d), p + "attn_output.weight": (d, n * h),
                p + "attn_q_norm.weight": (h,), p + "attn_k_norm.weight": (h,),
                p + "attn_norm.weight": (d,), p + "post_attention_norm.weight": (d,),
                p + "ffn_norm.weight": (d,), p + "post_ffw_norm.weight": (d,),
                p + "ffn_gate.weight": (f, d), p + "ffn_up.weight": (f, d),
                p + "ffn_down.weight": (d, f)})
  return out


# GGUF name (after "blk.N.") → (path inside layer N, is a norm)
_LAYER_NAMES = {
    "attn_q.weight": (("attn", "q", "kernel"), False),
    "attn_k.weight": (("attn", "k", "kernel"), False),
    "attn_v.weight": (("attn", "v", "kernel"), False),
    "attn_output.weight": (("attn", "o", "kernel"), False),
    "attn_q_norm.weight": (("attn", "q_norm", "scale"), True),
    "attn_k_norm.weight": (("attn", "k_norm", "scale"), True),
    "attn_norm.weight": (("pre_attn_norm", "scale"), True),
    "post_attention_norm.weight": (("post_attn_norm", "scale"), True),
    "ffn_norm.weight": (("pre_ffw_norm", "scale"), True),
    "post_ffw_norm.weight": (("post_ffw_norm", "scale"), True),
    "ffn_gate.weight": (("gate", "kernel"), False),
    "ffn_up.weight": (("up", "kernel"), False),
    "ffn_down.weight": (("down", "kernel"), False),
}


def _target(name: str) -> tuple[tuple[Any, ...], bool]:
  if name == "token_embd.weight":
    return ("embed", "embedding"), False
  if name == "output_norm.weight":
    return ("final_norm", "scale"), True
  _, layer, rest = name.split(".", 2)
  path, is_norm = _LAYER_NAMES[rest]
  return ("layers", int(layer)) + path, is_norm


def config_from_metadata(fields: dict[str, Any], vocab_size: int,
                         **overrides) -> gemma.GemmaConfig:
  """A ``GemmaConfig`` from a GGUF file's ``gemma3.*`` metadata."""
  def get(key, default=None):
    if f"{ARCH}.{key}" in fields:
      return fields[f"{ARCH}.{key}"]
    if default is None:
      raise errors.DataError(f"the GGUF file has no '{ARCH}.{key}' field (not a Gemma 3 "
                             "file?)")
    return default
  values = dict(vocab_size=vocab_size, d_model=int(get("embedding_length")),
                num_layers=int(get("block_count")),
                num_heads=int(get("attention.head_count")),
                num_kv_heads=int(get("attention.head_count_kv")),
                head_dim=int(get("attention.key_length")),
                d_ff=int(get("feed_forward_length")),
                sliding_window=int(get("attention.sliding_window")),
                global_base=float(get("rope.freq_base")),
                norm_eps=float(get("attention.layer_norm_rms_epsilon")))
  values.update(overrides)
  return gemma.GemmaConfig(**values)


def read_fields(reader) -> dict[str, Any]:
  """Scalar and string metadata of a ``GGUFReader`` (arrays are left out)."""
  out = {}
  for name, field in reader.fields.items():
    if name.startswith("tokenizer.ggml.") and len(field.data) > 1:
      continue  # the vocabulary arrays: tokenizer.py reads them
    try:
      out[name] = field.contents()
    except Exception:  # pylint: disable=broad-except  (an odd field: not ours)
      continue
  return out


def load_gguf(path: str | os.PathLike[str], **config_overrides):
  """(config, params) from a Gemma 3 GGUF: params is a nested dict of float32 arrays
  whose layout is ``gemma.Gemma3``'s (``set_params`` puts it into a model)."""
  gguf = _gguf()
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise errors.MissingFileError(f"{path}: no such GGUF file")
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # pylint: disable=broad-except  (any unreadable file)
    raise errors.DataError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
  fields = read_fields(reader)
  if fields.get("general.architecture") != ARCH:
    raise errors.DataError(f"{path}: architecture {fields.get('general.architecture')!r}, "
                           f"expected {ARCH!r}")
  tensors = {t.name: t for t in reader.tensors}
  if "token_embd.weight" not in tensors:
    raise errors.DataError(f"{path}: no token_embd.weight tensor")
  vocab = int(tensors["token_embd.weight"].shape[-1])
  cfg = config_from_metadata(fields, vocab, **config_overrides)
  want = expected_shapes(cfg)
  missing = sorted(set(want) - set(tensors))
  extra = sorted(set(tensors) - set(want))
  if missing or extra:
    raise errors.DataError(f"{path}: tensors do not match a {cfg.num_layers}-layer Gemma 3 "
                           f"(missing {missing[:5]}, unexpected {extra[:5]})")
  params: dict[str, Any] = {}
  for name, shape in want.items():
    t = tensors[name]
    value = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
    if value.shape != shape:
      raise errors.DataError(f"{path}: {name} has shape {value.shape}, expected {shape} "
                             f"({t.tensor_type.name})")
    _put(params, name, value)
  return cfg, params


def _put(params: dict, name: str, value: np.ndarray) -> None:
  path, is_norm = _target(name)
  if is_norm:
    value = value - 1.0
  elif name != "token_embd.weight":  # (the embedding stays [V, D])
    value = value.T
  node = params
  for key in path[:-1]:
    node = node.setdefault(key, {})
  node[path[-1]] = np.ascontiguousarray(value)


def _flatten(tree: dict, prefix=()) -> dict[tuple, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def place_like(old, new):
  """``new`` as an array of ``old``'s dtype, on ``old``'s sharding when it has one (a
  sharded state keeps its layout)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if tuple(np.shape(old)) != tuple(np.shape(new)):
    raise ValueError(f"shape {tuple(np.shape(new))} into {tuple(np.shape(old))}")
  sharding = getattr(old, "sharding", None)
  if isinstance(sharding, jax.sharding.Sharding):
    return jax.device_put(np.asarray(new, old.dtype), sharding)
  return jnp.asarray(new, old.dtype)


def set_params(model: gemma.Gemma3, params: dict) -> None:
  """Copies ``params`` (``load_gguf``'s layout) into ``model``, shape by shape (LoRA
  adapters, not in ``params``, are left as they are)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  state = nnx.state(model, gemma.BASE_PARAMS)  # (LoRA adapters keep their values)
  have, given = _flatten(state.to_pure_dict()), _flatten(params)
  if set(given) != set(have):
    missing = sorted(map(str, set(have) - set(given)))[:5]
    extra = sorted(map(str, set(given) - set(have)))[:5]
    raise ValueError(f"parameters do not match the model (missing {missing}, "
                     f"unexpected {extra})")
  for key, value in given.items():
    if tuple(value.shape) != tuple(have[key].shape):
      raise ValueError(f"parameter {'/'.join(map(str, key))}: shape {value.shape}, the "
                       f"model has {have[key].shape}")
  pure = jax.tree.map(place_like, state.to_pure_dict(), params)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)


def params_of(model: gemma.Gemma3) -> dict:
  """The model's base parameters (no LoRA adapters) as nested dicts of numpy arrays
  (``load_gguf``'s layout)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: np.asarray(x, np.float32),
                      nnx.state(model, gemma.BASE_PARAMS).to_pure_dict())


def write_gguf(path: str | os.PathLike[str], cfg: gemma.GemmaConfig, params: dict,
               tokenizer_fields: dict[str, Any] | None = None) -> None:
  """Writes ``params`` as a float32 Gemma 3 GGUF (the conventions ``load_gguf`` reads);
  ``tokenizer_fields``: {"tokens": [...], "scores": [...], "token_type": [...]} to
  include a vocabulary."""
  gguf = _gguf()
  w = gguf.GGUFWriter(os.fspath(path), ARCH)
  w.add_context_length(32768)
  w.add_embedding_length(cfg.d_model)
  w.add_block_count(cfg.num_layers)
  w.add_feed_forward_length(cfg.d_ff)
  w.add_head_count(cfg.num_heads)
  w.add_head_count_kv(cfg.num_kv_heads)
  w.add_key_length(cfg.head_dim)
  w.add_value_length(cfg.head_dim)
  w.add_layer_norm_rms_eps(cfg.norm_eps)
  w.add_rope_freq_base(cfg.global_base)
  w.add_sliding_window(cfg.sliding_window)
  if tokenizer_fields:
    w.add_tokenizer_model("llama")
    w.add_token_list(tokenizer_fields["tokens"])
    w.add_token_scores(tokenizer_fields["scores"])
    w.add_token_types(tokenizer_fields["token_type"])
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
  for name in expected_shapes(cfg):
    path_, is_norm = _target(name)
    node = params
    for key in path_:
      node = node[key]
    value = np.asarray(node, np.float32)
    if is_norm:
      value = value + 1.0
    elif name != "token_embd.weight":
      value = value.T
    w.add_tensor(name, np.ascontiguousarray(value))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


# Hugging Face safetensors names (``model.language_model.`` or ``model.`` prefix) → GGUF's
_HF_LAYER = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight":
    "attn_output.weight", "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight", "input_layernorm.weight":
    "attn_norm.weight", "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight"}


def load_safetensors(folder: str | os.PathLike[str], cfg: gemma.GemmaConfig):
  """(cfg, params) from a Hugging Face Gemma 3 checkpoint folder (``*.safetensors``;
  its norms are zero-centred already, its matrices ``[out, in]``), checked against
  ``cfg``'s shapes."""
  from safetensors import numpy as st_np  # pylint: disable=g-import-not-at-top
  folder = os.fspath(folder)
  files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) if (
      os.path.isdir(folder)) else []
  if not files:
    raise errors.MissingFileError(f"{folder}: no *.safetensors files")
  tensors = {}
  for f in files:
    tensors.update(st_np.load_file(os.path.join(folder, f)))
  renamed = {}
  for name, value in tensors.items():
    short = name.split("language_model.", 1)[-1].removeprefix("model.")
    if short == "embed_tokens.weight":
      renamed["token_embd.weight"] = value
    elif short == "norm.weight":
      renamed["output_norm.weight"] = value + 1.0  # (to GGUF's convention, undone below)
    elif short.startswith("layers."):
      _, layer, rest = short.split(".", 2)
      if rest in _HF_LAYER:
        gguf_name = f"blk.{layer}.{_HF_LAYER[rest]}"
        renamed[gguf_name] = value + 1.0 if rest.endswith("norm.weight") else value
  want = expected_shapes(cfg)
  missing = sorted(set(want) - set(renamed))
  if missing:
    raise errors.DataError(f"{folder}: missing Gemma 3 tensors {missing[:5]}")
  params: dict = {}
  for name, shape in want.items():
    value = np.asarray(renamed[name], np.float32)
    if value.shape != shape:
      raise errors.DataError(f"{folder}: {name} has shape {value.shape}, expected {shape}")
    _put(params, name, value)
  return cfg, params
