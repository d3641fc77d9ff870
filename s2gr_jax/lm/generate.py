"""Generation with the KV-cached Gemma: greedy, sampling, beam search, and the
catalogue-constrained search over Semantic IDs.

Free text (``generate``, ``beam_search``): the prompts (left-padded) are prefilled
once, then one cached decoder step per new token inside ``jax.lax.scan`` (static
shapes: ``max_new_tokens`` steps; a sequence that emitted ``<eos>`` keeps emitting
padding). ``beam_search`` keeps K beams a prompt by summed log-probability; a finished
beam keeps its score.

Semantic IDs (``SidGenerator``): the language model behind the project's generator
protocol (``start_decoding`` / ``decode_level``, as TIGER and S²GR implement it), so
the catalogue-constrained ``decoding.beam_search`` over the ``PrefixTrie`` of the SID
table, ``recommend``, the evaluation, export and GRPO's sampler run on it unchanged:
after the prompt (which ends with the marker after which the SID comes), level l's
log-probabilities are the LM's full-vocabulary log-softmax read at that level's SID
tokens (``sid_vocab.SidVocab``), and the trie allows only continuations some catalogue
item has. A wide enough beam therefore gives the brute-force ranking of every item by
its SID tokens' summed log-probability.
"""

from __future__ import annotations

import functools

from flax import nnx
import jax
import jax.numpy as jnp

from s2gr_jax.lm import gemma
from s2gr_jax.lm import tokenizer as tok_lib


def pad_prompts(prompts: list[list[int]], length: int | None = None):
  """Left-pads token-id lists: (tokens int32[B, T], valid bool[B, T])."""
  t = length or max(len(p) for p in prompts)
  if any(len(p) > t for p in prompts):
    raise ValueError(f"a prompt is longer than {t} tokens")
  tokens = [[tok_lib.PAD] * (t - len(p)) + list(p) for p in prompts]
  valid = [[False] * (t - len(p)) + [True] * len(p) for p in prompts]
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(valid, bool)


@functools.partial(jax.jit, static_argnames=("max_new_tokens", "greedy", "eos"))
def generate(model: gemma.Gemma3, tokens, valid, key, *, max_new_tokens: int,
             greedy: bool = True, temperature: float = 1.0, eos: int = tok_lib.EOS):
  """New tokens int32[B, max_new_tokens] after each prompt (greedy, or sampled at
  ``temperature``); after ``eos`` a sequence emits padding."""
  hidden, cache = model.prefill(tokens, valid, tokens.shape[1] + max_new_tokens)
  logits = model.logits(hidden)

  def pick(logits, key):
    if greedy:
      return jnp.argmax(logits, -1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, -1).astype(jnp.int32)

  def step(carry, key):
    logits, cache, done = carry
    token = jnp.where(done, tok_lib.PAD, pick(logits, key))
    hidden, cache = model.decode(token[:, None], cache)
    return (model.logits(hidden[:, 0]), cache, done | (token == eos)), token

  keys = jax.random.split(key, max_new_tokens)
  done = jnp.zeros(tokens.shape[:1], bool)
  _, out = jax.lax.scan(step, (logits, cache, done), keys)
  return out.T


def _tile(tree, k: int):
  """Repeats every leaf's batch rows k times: [B, ...] → [B * k, ...]."""
  return jax.tree.map(lambda x: jnp.repeat(x, k, axis=0) if x.ndim else x, tree)


@functools.partial(jax.jit, static_argnames=("beam", "max_new_tokens", "eos"))
def beam_search(model: gemma.Gemma3, tokens, valid, *, beam: int, max_new_tokens: int,
                eos: int = tok_lib.EOS):
  """The ``beam`` best continuations of each prompt by summed log-probability:
  tokens int32[B, beam, max_new_tokens] and scores float32[B, beam], best first."""
  b = tokens.shape[0]
  hidden, cache = model.prefill(tokens, valid, tokens.shape[1] + max_new_tokens)
  log_probs = jax.nn.log_softmax(model.logits(hidden), -1)  # [B, V]
  v = log_probs.shape[-1]
  cache = _tile(cache, beam)
  log_probs = jnp.repeat(log_probs, beam, axis=0).reshape(b, beam, v)
  # Only beam 0 is live at the start, so the first step's top-K are distinct tokens.
  score = jnp.where(jnp.arange(beam) == 0, 0.0, -jnp.inf)[None].repeat(b, 0)
  done = jnp.zeros((b, beam), bool)
  seqs = jnp.zeros((b, beam, max_new_tokens), jnp.int32)
  stay = jnp.full((v,), -jnp.inf).at[tok_lib.PAD].set(0.0)  # a finished beam: padding

  def step(carry, t):
    score, done, seqs, log_probs, cache = carry
    step_lp = jnp.where(done[..., None], stay, log_probs)
    cand = (score[..., None] + step_lp).reshape(b, beam * v)
    score, top = jax.lax.top_k(cand, beam)
    parent, token = top // v, (top % v).astype(jnp.int32)
    seqs = jnp.take_along_axis(seqs, parent[..., None], 1).at[:, :, t].set(token)
    done = jnp.take_along_axis(done, parent, 1) | (token == eos)
    rows = (jnp.arange(b)[:, None] * beam + parent).reshape(-1)
    cache = jax.tree.map(lambda x: x[rows] if x.ndim else x, cache)
    # (the last step's decode is not needed, but keeps the scan body uniform; the
    # cache has a slot for it)
    hidden, cache = model.decode(token.reshape(-1, 1), cache)
    log_probs = jax.nn.log_softmax(model.logits(hidden[:, 0]), -1).reshape(b, beam, v)
    return (score, done, seqs, log_probs, cache), None

  (score, _, seqs, _, _), _ = jax.lax.scan(
      step, (score, done, seqs, log_probs, cache), jnp.arange(max_new_tokens))
  return seqs, score


class SidGenerator(nnx.Module):
  """The language model as a generator over Semantic IDs (module docstring).

  ``batch`` holds ``prompt_tokens`` int32[B, T] (left-padded, ending with the marker
  after which the SID comes) and ``prompt_valid`` bool[B, T]. An NNX module, so it goes
  into ``jax.jit`` as an argument (a closed-over 270M model would be baked into the
  program as constants)."""

  def __init__(self, model: gemma.Gemma3, level_ids: jax.Array):
    self.model = model
    # [L, max codes]: the LM token id of each (level, code)
    self.level_ids = nnx.Variable(jnp.asarray(level_ids, jnp.int32))

  @property
  def num_levels(self) -> int:
    return self.level_ids.shape[0]

  def _ids(self, level: int) -> jax.Array:
    return self.level_ids[...][level]

  def start_decoding(self, batch, beam: int):
    tokens, valid = batch["prompt_tokens"], batch["prompt_valid"]
    b = tokens.shape[0]
    hidden, cache = self.model.prefill(tokens, valid, tokens.shape[1] + self.num_levels)
    first = jax.nn.log_softmax(self.model.logits(hidden), -1)  # [B, V]
    per_beam = jax.tree.map(
        lambda x: jnp.broadcast_to(x[:, None], (b, beam) + x.shape[1:]),
        {"k": cache.k, "v": cache.v, "slot_pos": cache.slot_pos, "first": first})
    return {"per_beam": per_beam, "length": cache.length}

  def decode_level(self, state, prev_codes, level: int):
    """Log-probs [B, K, V_level] of level ``level``'s codes (full-vocabulary
    log-softmax read at the level's SID tokens)."""
    pb = state["per_beam"]
    b, k = pb["slot_pos"].shape[:2]
    if level == 0:  # (the prompt's last log-probs, then dropped: never gathered)
      rest = {name: x for name, x in pb.items() if name != "first"}
      return pb["first"][..., self._ids(0)], dict(state, per_beam=rest)
    flat = lambda x: x.reshape((b * k,) + x.shape[2:])
    cache = gemma.Cache(k=tuple(map(flat, pb["k"])), v=tuple(map(flat, pb["v"])),
                        slot_pos=flat(pb["slot_pos"]), length=state["length"])
    token = self._ids(level - 1)[prev_codes].reshape(b * k, 1)
    hidden, cache = self.model.decode(token, cache)
    log_probs = jax.nn.log_softmax(self.model.logits(hidden[:, 0]), -1).reshape(b, k, -1)
    unflat = lambda x: x.reshape((b, k) + x.shape[1:])
    per_beam = {"k": tuple(map(unflat, cache.k)), "v": tuple(map(unflat, cache.v)),
                "slot_pos": unflat(cache.slot_pos)}
    return log_probs[..., self._ids(level)], {"per_beam": per_beam,
                                                   "length": cache.length}
