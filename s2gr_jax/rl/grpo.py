"""GRPO for every generator: sample G catalogue paths per user, reward, update.

One step (``make_rl_step``), all inside ``jit`` and sharded over the mesh like the
supervised step:

1. **Sample** (``sample_paths``) G paths per user from the current policy under the
   generator's catalogue constraint, so every sampled path is a catalogue item:
   * ordered SIDs (``PrefixTrie``: TIGER, S²GR): at each level a categorical draw over
     the trie children of the path (the model's log-probabilities / temperature,
     renormalised over the allowed codes);
   * unordered codebooks (``CodeSets``: REG4Rec): each path continues in its most
     confident open codebook, as CRSS does (``decoding/sets.py``; ``order='fixed'``:
     codebook ``step``), and the code is drawn among that codebook's codes that some
     still-possible item carries; then the de-duplication token among the alive items'.
     The codebook choice is a deterministic function of the path, so the policy's
     probability of a path is the product of its code draws. CORP does not prune
     rollouts.
   Every step records its candidate tokens, which are allowed, and the slot drawn.
   ``rl.rollout='beam'`` (``beam_paths``) takes the group from the constrained beam
   search instead, the G best distinct items (MiniOneRec's beam rollouts), and replays
   each along the sampler's steps (``forced``), so it is scored by the same per-step
   distributions as a sampled path.
2. **Score** (``step_log_probs``): the same decoder steps replayed on the recorded
   tokens (differentiable), each step's log-probability renormalised over the recorded
   allowed candidates: exactly the sampling distribution, so with a zero learning rate
   the ratio to the sampling policy is 1 and nothing moves.
3. **Rewards** (``rewards.combine``) and group-normalised advantages
   ``(r - mean_G) / (std_G + eps)`` (sum zero per user).
4. **Update**, ``updates_per_sample`` times on the same samples: the clipped surrogate
   per step, min(ρ A, clip(ρ, 1 ± ε) A), minus ``kl_coef`` × the k3 estimator
   exp(q - p) - (q - p) - 1 of KL(π ‖ π_SFT) per step (q: the frozen SFT policy's
   log-probability), averaged over steps, paths and users (weight-0 rows excluded).
   With ``sft_weight`` λ > 0, plus λ × the negative log-likelihood of the example's
   own target item along the sampler's steps (the target forced through
   ``sample_paths``, each step renormalised over its allowed candidates): supervision
   on the same examples, so GRPO on examples the supervised run held out
   (``rl.examples='last'``) learns their targets as well as ranking them.

Logged per step: the mean reward and each part, the hit rate (sampled item = target),
KL, clip fraction (of the last update), entropy of the sampling distribution per step.
"""

from __future__ import annotations

import dataclasses

from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp
import optax

from s2gr_jax.data import batches
from s2gr_jax.rl import rewards as rewards_lib


@struct.dataclass
class Rollout:
  """G sampled paths per user and what scoring them needs.

  Attributes:
    slots: per step, int32[B, G]: the candidate drawn.
    cands: per step, int32[B, G, W_step]: the candidate tokens (indices into the
      model's log-probabilities at that step).
    valid: per step, bool[B, G, W_step]: which candidates were allowed.
    paths: the sampled items and their orders (``rewards.Paths``).
  """

  slots: tuple[jax.Array, ...]
  cands: tuple[jax.Array, ...]
  valid: tuple[jax.Array, ...]
  paths: rewards_lib.Paths

  def tokens(self, step: int) -> jax.Array:
    return jnp.take_along_axis(self.cands[step], self.slots[step][..., None], -1)[..., 0]


def _draw(key, log_probs, cand, valid, temperature, forced=None):
  """The slot drawn at one step; with ``forced`` (int32[B, G], the token each path
  must take) the slot that holds it among the allowed candidates."""
  if forced is not None:
    return (valid & (cand == forced[..., None])).argmax(-1).astype(jnp.int32)
  logits = jnp.where(valid, jnp.take_along_axis(log_probs, cand, -1) / temperature,
                     -jnp.inf)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def sample_paths(model, batch, index, *, group: int, key: jax.Array | None,
                 temperature: float = 1.0, forced: jax.Array | None = None,
                 codes: jax.Array | None = None) -> Rollout:
  """``group`` paths per user from ``model`` under ``index`` (``decoding.make_index``).

  With ``forced`` (int32[B, G], catalogue item ids) nothing is drawn: each path takes
  the steps that lead to its forced item, ``codes`` (int32[N + 1, L], the items' codes,
  ``RewardTables.codes``) saying which token that is at each step; the codebook order
  is the sampler's own (the most confident open codebook of the path so far)."""
  if forced is not None and codes is None:
    raise ValueError("sample_paths(forced=...) needs the items' codes (codes=...)")
  forced_codes = None if forced is None else codes[forced]  # [B, G, L]
  if index.kind == "prefix":
    return _sample_prefix(model, batch, index, group, key, temperature, forced_codes)
  if index.kind == "sets":
    return _sample_sets(model, batch, index, group, key, temperature, forced_codes)
  raise ValueError(f"GRPO samples paths of generators; a {index.kind!r} index (a model "
                   "that scores items directly) has no paths to sample")


def _fold(key, step):
  return None if key is None else jax.random.fold_in(key, step)


def _level(forced_codes, level):
  """The forced items' codes at ``level`` (None when nothing is forced)."""
  return None if forced_codes is None else forced_codes[..., level]


def _sample_prefix(model, batch, index, group, key, temperature,
                   forced_codes) -> Rollout:
  b = batches.batch_size(batch)
  state = model.start_decoding(batch, group)
  node = jnp.broadcast_to(index.root(b), (b, group))
  parent = jnp.broadcast_to(jnp.arange(group, dtype=jnp.int32), (b, group))
  slots, cands, valids, tokens = [], [], [], None
  for step in range(len(index.widths)):
    log_probs, state = model.decode_level(state, tokens, step)
    cand, valid = index.allowed(node, step)
    slot = _draw(_fold(key, step), log_probs, cand, valid, temperature,
                 _level(forced_codes, step))
    node = index.advance(node, step, parent, slot)
    tokens = jnp.take_along_axis(cand, slot[..., None], -1)[..., 0]
    slots.append(slot), cands.append(cand), valids.append(valid)
  levels = len(index.widths)  # ordered: step l emits level l
  order = jnp.broadcast_to(jnp.arange(levels, dtype=jnp.int32), (b, group, levels))
  return Rollout(tuple(slots), tuple(cands), tuple(valids),
                 rewards_lib.Paths(item=index.item(node), order=order))


def _sample_sets(model, batch, index, group, key, temperature,
                 forced_codes) -> Rollout:
  b = batches.batch_size(batch)
  m = len(index.sizes)
  fixed = getattr(model.cfg, "order", "confidence") == "fixed"
  offsets = jnp.asarray(index.offsets, jnp.int32)
  sizes = jnp.asarray(index.sizes, jnp.int32)
  width = max(index.sizes)
  state = model.start_decoding(batch, group)
  alive = jnp.full((b, group, index.posting.shape[1]), -1, jnp.int32)
  picked = jnp.zeros((b, group, m), bool)
  order = jnp.zeros((b, group, m), jnp.int32)
  slots, cands, valids, tokens = [], [], [], None
  for step in range(m):
    log_probs, state = model.decode_level(state, tokens, step)  # [B, G, ΣD]
    if step == 0:
      allowed = jnp.broadcast_to(index.used, log_probs.shape)
    else:
      allowed = index.carried(alive) & ~jnp.take_along_axis(
          picked, jnp.broadcast_to(index.codebook_of, log_probs.shape), axis=2)
    if fixed:
      chosen = jnp.full((b, group), step, jnp.int32)
    else:
      masked = jnp.where(allowed, log_probs, -jnp.inf)
      best = jnp.stack([masked[..., o:o + s].max(-1) for o, s in
                        zip(index.offsets, index.sizes)], axis=-1)
      chosen = best.argmax(-1).astype(jnp.int32)
    slot_ids = jnp.arange(width)
    in_book = slot_ids < sizes[chosen][..., None]
    cand = offsets[chosen][..., None] + jnp.where(in_book, slot_ids, 0)
    valid = in_book & jnp.take_along_axis(allowed, cand, -1)
    want = None
    if forced_codes is not None:  # the forced item's code in the chosen codebook
      want = offsets[chosen] + jnp.take_along_axis(forced_codes, chosen[..., None],
                                                   -1)[..., 0]
    slot = _draw(_fold(key, step), log_probs, cand, valid, temperature, want)
    tokens = jnp.take_along_axis(cand, slot[..., None], -1)[..., 0]
    order = order.at[:, :, step].set(chosen)
    picked = picked | jax.nn.one_hot(chosen, m, dtype=bool)
    if step == 0:
      alive = index.posting[tokens]
    else:
      has = index.codes[jnp.maximum(alive, 0), chosen[..., None]] == (
          tokens - offsets[chosen])[..., None]
      alive = jnp.where((alive >= 0) & has, alive, -1)
    slots.append(slot), cands.append(cand), valids.append(valid)
  if index.dedup_size:
    log_probs, state = model.decode_level(state, tokens, m)
    cand = jnp.broadcast_to(jnp.arange(index.dedup_size, dtype=jnp.int32),
                            (b, group, index.dedup_size))
    valid = index.carried(alive, m)
    slot = _draw(_fold(key, m), log_probs, cand, valid, temperature,
                 _level(forced_codes, m))
    alive = jnp.where((alive >= 0) & (index.codes[jnp.maximum(alive, 0), m]
                                      == slot[..., None]), alive, -1)
    slots.append(slot), cands.append(cand), valids.append(valid)
  return Rollout(tuple(slots), tuple(cands), tuple(valids),
                 rewards_lib.Paths(item=index.item(alive), order=order))


def beam_paths(model, batch, index, *, group: int, codes: jax.Array,
               temperature: float = 1.0) -> Rollout:
  """The group as the ``group`` best items of the model's constrained beam search
  (``decoding.recommend``, beam = group), best first, each replayed along the
  sampler's steps; where the search returns fewer items (a tiny catalogue) the best
  one fills the empty slots. ``paths.rank`` holds each path's place in the beam."""
  from s2gr_jax import decoding  # pylint: disable=g-import-not-at-top
  items, _ = decoding.recommend(model, batch, index, beam=group)
  items = jnp.where(items > 0, items, items[:, :1])
  rollout = sample_paths(model, batch, index, group=group, key=None,
                         temperature=temperature, forced=items, codes=codes)
  rank = jnp.broadcast_to(jnp.arange(group, dtype=jnp.int32), items.shape)
  return rollout.replace(paths=rollout.paths.replace(rank=rank))


def step_log_probs(model, batch, rollout: Rollout, temperature: float = 1.0):
  """Per step, the policy's log-probability of the recorded draw, float32[B, G, S],
  and the entropy of each step's (allowed) distribution, float32[B, G, S]."""
  group = rollout.slots[0].shape[1]
  state = model.start_decoding(batch, group)
  tokens, chosen, entropy = None, [], []
  for step in range(len(rollout.slots)):
    log_probs, state = model.decode_level(state, tokens, step)
    valid = rollout.valid[step]
    logits = jnp.where(valid, jnp.take_along_axis(log_probs, rollout.cands[step], -1)
                       / temperature, -jnp.inf)
    lp = jax.nn.log_softmax(logits, axis=-1)
    chosen.append(jnp.take_along_axis(lp, rollout.slots[step][..., None], -1)[..., 0])
    entropy.append(-jnp.where(valid, jnp.exp(lp) * lp, 0.0).sum(-1))
    tokens = rollout.tokens(step)
  return jnp.stack(chosen, -1), jnp.stack(entropy, -1)


def _unique_share(items: jax.Array) -> jax.Array:
  """float32[B, G]: 1 at each path whose item no earlier path of the group took (its
  mean over G is the share of distinct items in the group)."""
  same = items[:, :, None] == items[:, None, :]
  earlier = jnp.tril(jnp.ones(same.shape[1:], bool), -1)
  return (~(same & earlier).any(-1)).astype(jnp.float32)


def group_advantages(rewards: jax.Array, eps: float = 1e-6) -> jax.Array:
  """(r - mean) / (std + eps) within each user's group of G, float32[B, G]; 0 in a
  group whose rewards are all equal (float rounding of their mean would otherwise be
  divided by eps into a spurious advantage)."""
  mean = rewards.mean(-1, keepdims=True)
  std = rewards.std(-1, keepdims=True)
  same = (rewards == rewards[..., :1]).all(-1, keepdims=True)
  return jnp.where(same, 0.0, (rewards - mean) / (std + eps))


@dataclasses.dataclass(frozen=True)
class GrpoSettings:
  """The static settings of the step (from ``config.rl``)."""

  group: int = 16
  kl_coef: float = 0.001
  clip_eps: float = 0.2
  updates_per_sample: int = 2
  temperature: float = 1.0
  rollout: str = "sample"
  weights: tuple[tuple[str, float], ...] = (("prefix", 1.0),)
  msra_decay: float = 0.5
  sft_weight: float = 0.0

  @classmethod
  def from_config(cls, rl, search: str) -> "GrpoSettings":
    sft_weight = float(rl.get("sft_weight", 0.0))
    weights = rewards_lib.parse_weights(rl.rewards, search, allow_none=sft_weight > 0)
    return cls(group=rl.group_size, kl_coef=rl.kl_coef, clip_eps=rl.clip_eps,
               updates_per_sample=rl.updates_per_sample, temperature=rl.temperature,
               rollout=rl.get("rollout", "sample"), weights=tuple(weights.items()),
               msra_decay=rl.msra_decay, sft_weight=sft_weight)


def make_optimizer(rl) -> optax.GradientTransformation:
  """AdamW at ``rl.lr`` after ``rl.warmup_steps`` of linear warm-up, then constant."""
  if rl.warmup_steps > 0:
    schedule = optax.linear_schedule(0.0, rl.lr, rl.warmup_steps)
  else:
    schedule = optax.constant_schedule(rl.lr)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  return optax.chain(optax.clip_by_global_norm(rl.grad_clip),
                     optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=rl.weight_decay,
                                 mask=decay_mask))


def targets_of(batch) -> jax.Array:
  """int32[B, N]: the example's target, then its MSRA future items (if the batch has
  them, ``future_items``: the next training items, 0 where none)."""
  target = batch["target_item"][:, None]
  if "future_items" in batch:
    return jnp.concatenate([target, batch["future_items"]], axis=1)
  return target


def make_rl_step(graphdef, model_graphdef, settings: GrpoSettings, wrt=nnx.Param):
  """The GRPO step: (state, batch, base_key, ref_state, index, tables) → (state,
  metrics); state (model + optimizer, ``train.create_state``) is donated, ``ref_state``
  is the frozen SFT model's state."""
  s = settings
  weights = dict(s.weights)

  def rl_step(state, batch, base_key, ref_state, index, tables):
    model, opt = nnx.merge(graphdef, state)
    key = jax.random.fold_in(base_key, opt.step[...])
    if s.rollout == "beam":
      rollout = beam_paths(model, batch, index, group=s.group, codes=tables.codes,
                           temperature=s.temperature)
    else:
      rollout = sample_paths(model, batch, index, group=s.group, key=key,
                             temperature=s.temperature)
    rollout = jax.lax.stop_gradient(rollout)
    target_path = None
    if s.sft_weight > 0:
      target_path = jax.lax.stop_gradient(sample_paths(
          model, batch, index, group=1, key=None, forced=batch["target_item"][:, None],
          codes=tables.codes))
    total, parts = rewards_lib.combine(rollout.paths, targets_of(batch), tables, weights,
                                       s.msra_decay)
    adv = group_advantages(total)[..., None]  # [B, G, 1]
    old = jax.lax.stop_gradient(step_log_probs(model, batch, rollout, s.temperature)[0])
    ref_model = nnx.merge(model_graphdef, ref_state)
    ref = jax.lax.stop_gradient(step_log_probs(ref_model, batch, rollout,
                                               s.temperature)[0])
    w = batch["weight"]
    mask = jnp.broadcast_to(w[:, None, None], old.shape)
    denom = jnp.maximum(mask.sum(), 1.0)
    mean = lambda x: (x * mask).sum() / denom

    def loss_fn(m):
      new, entropy = step_log_probs(m, batch, rollout, s.temperature)
      ratio = jnp.exp(new - old)
      surrogate = jnp.minimum(ratio * adv,
                              jnp.clip(ratio, 1 - s.clip_eps, 1 + s.clip_eps) * adv)
      d = ref - new
      kl = jnp.exp(d) - d - 1
      loss = mean(-(surrogate - s.kl_coef * kl))
      aux = {"kl": mean(kl), "entropy": mean(entropy),
             "clip_fraction": mean((jnp.abs(ratio - 1) > s.clip_eps)
                                   .astype(jnp.float32)),
             "ratio": mean(ratio)}
      if target_path is not None:
        nll = -step_log_probs(m, batch, target_path)[0].sum(-1)[:, 0]  # [B]
        aux["sft_nll"] = (nll * w).sum() / jnp.maximum(w.sum(), 1.0)
        loss = loss + s.sft_weight * aux["sft_nll"]
      return loss, aux

    metrics = None
    for update in range(s.updates_per_sample):
      (loss, aux), grads = nnx.value_and_grad(
          loss_fn, has_aux=True, argnums=nnx.DiffState(0, wrt))(model)
      if update == 0:
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "kl": aux["kl"],
                   "entropy": aux["entropy"]}
      metrics["clip_fraction"] = aux["clip_fraction"]  # the last update's
      metrics["ratio"] = aux["ratio"]
      if "sft_nll" in aux and update == 0:
        metrics["sft_nll"] = aux["sft_nll"]
      opt.update(model, grads)
    rows = jnp.maximum(w.sum(), 1.0)
    per_user = lambda x: (x.mean(-1) * w).sum() / rows
    metrics["reward"] = per_user(total)
    for name, value in parts.items():
      metrics[f"reward_{name}"] = per_user(value)
    metrics["hit_rate"] = per_user((rollout.paths.item == batch["target_item"][:, None])
                                   .astype(jnp.float32))
    metrics["valid_rate"] = per_user((rollout.paths.item > 0).astype(jnp.float32))
    metrics["unique_rate"] = per_user(_unique_share(rollout.paths.item))
    return nnx.split((model, opt))[1], metrics

  return jax.jit(rl_step, donate_argnums=0)

