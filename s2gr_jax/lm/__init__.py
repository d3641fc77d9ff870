"""Pretrained language models over Semantic IDs: Gemma 3 270M in Flax NNX.

``load_pretrained()`` fetches the GGUF on first use (``weights.py``) and returns the
model and its tokenizer; ``python -m s2gr_jax.lm generate --prompt TEXT`` tries it.
"""

from __future__ import annotations

import os


def build(cfg, params=None, seed: int = 0):
  """A ``gemma.Gemma3`` for ``cfg``: random weights (``seed``), or ``params``
  (``gguf_io.load_gguf``'s layout) without drawing random ones first."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from s2gr_jax.lm import gemma  # pylint: disable=g-import-not-at-top
  from s2gr_jax.lm import gguf_io  # pylint: disable=g-import-not-at-top
  if params is None:
    return gemma.Gemma3(cfg, rngs=nnx.Rngs(seed))
  import jax  # pylint: disable=g-import-not-at-top
  make = lambda: gemma.Gemma3(cfg, rngs=nnx.Rngs(seed))
  model = nnx.eval_shape(make)
  gguf_io.set_params(model, params)
  if cfg.lora_rank:  # fresh adapters (only they are computed: the rest is dead code)
    nnx.update(model, jax.jit(lambda: nnx.state(make(), nnx.LoRAParam))())
  return model


def load_pretrained(path: str | os.PathLike[str] | None = None, **config_overrides):
  """(model, tokenizer) from a Gemma 3 GGUF (default: the 270M model, fetched on first
  use into ``weights.default_dir()``), or from a folder of Hugging Face safetensors of
  the same architecture (then its tokenizer still comes from the fetched GGUF)."""
  from s2gr_jax.lm import gemma  # pylint: disable=g-import-not-at-top
  from s2gr_jax.lm import gguf_io  # pylint: disable=g-import-not-at-top
  from s2gr_jax.lm import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  from s2gr_jax.lm import weights  # pylint: disable=g-import-not-at-top
  if path is not None and os.path.isdir(path):
    cfg, params = gguf_io.load_safetensors(path, gemma.GemmaConfig.gemma3_270m(
        **config_overrides))
    tok = tok_lib.Tokenizer.from_gguf(weights.fetch_gguf())
  else:
    path = os.fspath(path) if path is not None else weights.fetch_gguf()
    cfg, params = gguf_io.load_gguf(path, **config_overrides)
    tok = tok_lib.Tokenizer.from_gguf(path)
  return build(cfg, params), tok
