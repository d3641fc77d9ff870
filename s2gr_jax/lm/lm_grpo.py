"""GRPO on the language model (SIDReasoner's stage 3): rollouts that think freely and
then emit a Semantic ID under the catalogue constraint.

A rollout of a prompt that ends with ``<think>``:

1. **Thinking**: up to ``think_tokens`` tokens sampled at ``temperature``
   (``generate.generate``), ending at the first ``</think>``; where none came, a
   ``</think>`` is appended (forced, so not learned).
2. **The SID**: after ``</think>`` and the separator (``"\\n\\n"``, forced), level by
   level from the LM's log-probabilities restricted by the ``PrefixTrie`` to SIDs of
   catalogue items (``rl.grpo.sample_paths`` over ``generate.SidGenerator``): every
   rollout names a real item.

All of it is one static-shape program: the tokens after a thought's ``</think>`` are
holes (``valid`` False: neither attended to nor counted in positions), so a batch of
thoughts of different lengths needs no re-packing.

**Reward**: SIDReasoner's (``rl.rewards.prefix``): 0.25 / 0.5 / 1.0 for the first 1 / 2
/ 3 semantic levels matching the target's (2^(n - L) for L levels; 0 when the first
misses), + 0.1 for a valid SID (always, under the constraint). **Advantage**: the
group-normalised reward (r - mean) / (std + 1e-6) over a prompt's ``group`` rollouts.
**Loss** (upstream's verl settings): token-mean over the sampled tokens (thought and
SID) of ``-A * ratio`` with ``ratio = exp(logp - stop_gradient(logp))`` (one update per
sample, so on-policy: the clipped PPO ratio is 1 and only its gradient acts) plus
``kl_coef`` x the low-variance KL estimate to the frozen reference (the stage-2 model),
``exp(ref - logp) - (ref - logp) - 1`` clipped to [-10, 10]. The log-probabilities are
the full-vocabulary ones of the teacher-forced sequence, computed in ``micro_batch``
rows at a time (gradients summed in a ``lax.scan``).
"""

from __future__ import annotations

import dataclasses

from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp
import optax

from s2gr_jax.lm import generate
from s2gr_jax.lm import sft
from s2gr_jax.lm import tokenizer as tok_lib
from s2gr_jax.rl import grpo as rl_grpo
from s2gr_jax.rl import rewards as rewards_lib


@dataclasses.dataclass(frozen=True)
class LmGrpoSettings:
  group: int = 16
  think_tokens: int = 64
  temperature: float = 1.0
  kl_coef: float = 0.001
  micro_batch: int = 4
  think_close: int = 0
  separator: tuple[int, ...] = ()
  chunk: int = 256


def sid_prompt(prompt_tokens, prompt_valid, think, think_close: int, separator):
  """The prompt of the SID after a thought: (tokens, valid, sampled) [B, T + T' + 1 + S]:
  the prompt, the thought up to and including its first ``</think>`` (holes after it),
  a forced ``</think>`` where the thought has none, the separator; ``sampled`` marks
  the thought's tokens (what the policy chose)."""
  b = prompt_tokens.shape[0]
  is_close = think == think_close
  before = jnp.cumsum(is_close.astype(jnp.int32), axis=1) - is_close
  think_valid = before == 0  # up to and including the first </think>
  has_close = is_close.any(axis=1, keepdims=True)
  forced = jnp.where(has_close, tok_lib.PAD, think_close).astype(jnp.int32)
  sep = jnp.broadcast_to(jnp.asarray(separator, jnp.int32)[None], (b, len(separator)))
  tokens = jnp.concatenate([prompt_tokens, think.astype(jnp.int32), forced, sep], 1)
  valid = jnp.concatenate([prompt_valid, think_valid, ~has_close,
                           jnp.ones(sep.shape, bool)], 1)
  sampled = jnp.concatenate([jnp.zeros_like(prompt_valid), think_valid,
                             jnp.zeros_like(has_close), jnp.zeros(sep.shape, bool)], 1)
  return tokens, valid, sampled


@struct.dataclass
class LmRollout:
  tokens: jax.Array    # int32[N, S]: prompt, thought, </think>, separator, SID
  valid: jax.Array     # bool[N, S]
  sampled: jax.Array   # bool[N, S]: the tokens the policy drew (thought and SID)
  items: jax.Array     # int32[N]: the item of each SID


def rollout(model, level_ids, index, prompt_tokens, prompt_valid, key, *,
            think_tokens: int, think_close: int, separator, temperature: float = 1.0,
            greedy_think: bool = False) -> LmRollout:
  """One rollout per prompt row (module docstring); tile the prompts for a group."""
  k_think, k_sid = jax.random.split(key)
  n = prompt_tokens.shape[0]
  if think_tokens > 0:
    think = generate.generate(model, prompt_tokens, prompt_valid, k_think,
                              max_new_tokens=think_tokens, greedy=greedy_think,
                              temperature=temperature, eos=think_close)
  else:
    think = jnp.zeros((n, 0), jnp.int32)
  tokens, valid, sampled = sid_prompt(prompt_tokens, prompt_valid, think, think_close,
                                      separator)
  gen = generate.SidGenerator(model, level_ids)
  paths = rl_grpo.sample_paths(gen, {"prompt_tokens": tokens, "prompt_valid": valid},
                               index, group=1, key=k_sid, temperature=temperature)
  levels = level_ids.shape[0]
  sid = jnp.stack([level_ids[l][paths.tokens(l)[:, 0]] for l in range(levels)], -1)
  return LmRollout(tokens=jnp.concatenate([tokens, sid], 1),
                   valid=jnp.concatenate([valid, jnp.ones(sid.shape, bool)], 1),
                   sampled=jnp.concatenate([sampled, jnp.ones(sid.shape, bool)], 1),
                   items=paths.paths.item[:, 0])


def sequence_log_probs(model, tokens, valid, chunk: int = 256) -> jax.Array:
  """log p(tokens[:, t] | tokens[:, :t]) float32[N, S - 1] for t >= 1 (full
  vocabulary; where token t's predecessor is a hole the value is meaningless and must
  be masked, which ``sampled`` does: a sampled token always follows a real one)."""
  hidden = model.hidden(tokens, valid)[:, :-1]
  n, s, d = hidden.shape
  nll = sft.next_token_nll(model, hidden.reshape(-1, d), tokens[:, 1:].reshape(-1), chunk)
  return -nll.reshape(n, s)


def prefix_reward(items, targets, tables: rewards_lib.RewardTables) -> jax.Array:
  """SIDReasoner's reward of items int32[B, G] for targets int32[B]."""
  paths = rewards_lib.Paths(item=items, order=jnp.zeros(items.shape + (1,), jnp.int32))
  return rewards_lib.prefix(paths, targets, tables)


def make_step(graphdef, model_graphdef, settings: LmGrpoSettings, wrt):
  """(state, batch, base_key, ref_state, index, tables, level_ids) → (state, metrics),
  jitted, state donated; ``batch`` holds ``prompt_tokens``/``prompt_valid`` (prompts
  ending with ``<think>``) and ``target_item``."""
  g, mb = settings.group, settings.micro_batch

  def step(state, batch, base_key, ref_state, index, tables, level_ids):
    model, opt = nnx.merge(graphdef, state)
    key = jax.random.fold_in(base_key, opt.step[...])
    b = batch["prompt_tokens"].shape[0]
    tile = lambda x: jnp.repeat(x, g, axis=0)
    out = rollout(model, level_ids, index, tile(batch["prompt_tokens"]),
                  tile(batch["prompt_valid"]), key, think_tokens=settings.think_tokens,
                  think_close=settings.think_close, separator=settings.separator,
                  temperature=settings.temperature)
    out = jax.tree.map(jax.lax.stop_gradient, out)
    tokens, valid, sampled, items = out.tokens, out.valid, out.sampled, out.items
    rewards = prefix_reward(items.reshape(b, g), batch["target_item"], tables)
    adv = rl_grpo.group_advantages(rewards).reshape(-1)  # [B * G]
    mask = sampled[:, 1:].astype(jnp.float32)
    total = jnp.maximum(mask.sum(), 1.0)
    n = tokens.shape[0]
    if n % mb:
      raise ValueError(f"rl: {n} rollouts a step do not split into micro-batches of {mb}")
    split = lambda x: x.reshape((n // mb, mb) + x.shape[1:])
    parts = tuple(map(split, (tokens, valid, mask, adv)))

    ref_model = nnx.merge(model_graphdef, ref_state)
    ref_logp = jax.lax.map(
        lambda p: sequence_log_probs(ref_model, p[0], p[1], settings.chunk),
        parts[:2])
    ref_logp = jax.lax.stop_gradient(ref_logp)

    gdef, params, rest = nnx.split(model, wrt, ...)

    def mb_loss(params, tok, val, msk, a, ref):
      m = nnx.merge(gdef, params, rest)
      logp = sequence_log_probs(m, tok, val, settings.chunk)
      ratio = jnp.exp(logp - jax.lax.stop_gradient(logp))
      pg = -a[:, None] * ratio
      diff = ref - logp
      kl = jnp.clip(jnp.exp(diff) - diff - 1.0, -10.0, 10.0)
      loss = ((pg + settings.kl_coef * kl) * msk).sum() / total
      return loss, (kl * msk).sum()

    def acc(carry, xs):
      grads, loss, kl = carry
      (l, k), gr = jax.value_and_grad(mb_loss, has_aux=True)(params, *xs)
      return (jax.tree.map(jnp.add, grads, gr), loss + l, kl + k), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, loss, kl), _ = jax.lax.scan(acc, (zeros, 0.0, 0.0), parts + (ref_logp,))
    opt.update(model, grads)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
               "reward": rewards.mean(), "hit": (items.reshape(b, g)
                                                 == batch["target_item"][:, None]).mean(),
               "kl": kl / total, "think_tokens": mask.sum() / n - level_ids.shape[0],
               "closed": (sampled & (tokens == settings.think_close)).any(1).mean(),
               "unique_rate": rl_grpo._unique_share(items.reshape(b, g)).mean()}  # pylint: disable=protected-access
    return nnx.split((model, opt))[1], metrics

  return jax.jit(step, donate_argnums=0)
