"""Supervised fine-tuning of the language model on (prompt, completion) text.

* **Batches** (``pack``): prompt + completion token ids, cut to ``seq_len`` + 1 from
  the left (the completion's end is what must be kept), right-padded; the next-token
  targets are the sequence shifted by one and ``loss_mask`` covers exactly the targets
  that are completion tokens (completion-only loss).
* **Loss** (``completion_loss``): next-token cross-entropy over the masked targets. The
  vocabulary is 262k wide, so the logits are never built for the whole batch: positions
  go through the tied head in chunks (``jax.lax.map`` over ``jax.checkpoint``'d chunks:
  the backward pass recomputes each chunk's logits instead of storing them).
* **Step** (``make_step``): jitted, state donated; gradients for the parameters
  ``wrt`` selects: every ``nnx.Param`` (full fine-tuning) or ``nnx.LoRAParam`` (LoRA,
  ``GemmaConfig.lora_rank``); bf16 compute by ``GemmaConfig.dtype``; gradient
  checkpointing by ``GemmaConfig.remat``; state sharded by the project's mesh rules
  (``train.create_state``).
* **Loop** (``fine_tune``): ``train.train_loop``, the supervised trainer's own: Orbax
  checkpoints (last and best by validation loss), resume after a kill, NaN checks,
  metrics.jsonl and TensorBoard in the workdir.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Sequence

from flax import nnx
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from s2gr_jax import checkpoints as ckpt_lib
from s2gr_jax import errors
from s2gr_jax import parallel
from s2gr_jax import train as train_lib
from s2gr_jax.lm import gemma
from s2gr_jax.lm import gguf_io
from s2gr_jax.lm import tokenizer as tok_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Example:
  prompt: tuple[int, ...]
  completion: tuple[int, ...]


def pack(examples: Sequence[Example], seq_len: int, bucket: int = 0,
         loss_bucket: int = 0) -> dict[str, np.ndarray]:
  """A training batch: tokens, valid, targets, loss_mask [B, seq_len] (docstring).
  With ``bucket`` > 0 the batch is only as long as its longest example, rounded up to
  a multiple of ``bucket`` (at most ``seq_len``): short batches cost less, and the
  step compiles once per length bucket. ``loss_at`` (the answer positions, where the
  head is computed) is padded to a multiple of ``loss_bucket`` (0: of ``bucket``): the
  step compiles once per (length, ``loss_at`` size), so a coarser ``loss_bucket`` means
  fewer compilations (minutes each on a CPU) for some padded head rows a step."""
  b = len(examples)
  if bucket > 0:
    longest = max(len(e.prompt) + len(e.completion) - 1 for e in examples)
    seq_len = min(seq_len, -(-max(longest, 1) // bucket) * bucket)
  out = {"tokens": np.full((b, seq_len), tok_lib.PAD, np.int32),
         "valid": np.zeros((b, seq_len), bool),
         "targets": np.full((b, seq_len), tok_lib.PAD, np.int32),
         "loss_mask": np.zeros((b, seq_len), np.float32)}
  for i, ex in enumerate(examples):
    seq = list(ex.prompt) + list(ex.completion)
    is_completion = [False] * len(ex.prompt) + [True] * len(ex.completion)
    seq, is_completion = seq[-(seq_len + 1):], is_completion[-(seq_len + 1):]
    n = len(seq) - 1
    out["tokens"][i, :n] = seq[:-1]
    out["valid"][i, :n] = True
    out["targets"][i, :n] = seq[1:]
    out["loss_mask"][i, :n] = is_completion[1:]
  if bucket > 0:  # where the loss is: the head is computed there only (completion_loss)
    at = np.flatnonzero(out["loss_mask"].reshape(-1)).astype(np.int32)
    step = loss_bucket if loss_bucket > 0 else bucket
    size = -(-max(len(at), 1) // step) * step
    out["loss_at"] = np.concatenate([at, np.full(size - len(at), -1, np.int32)])
  return out


class PackBatch(grain.transforms.Map):
  """Indices → a packed batch (a grain transform)."""

  def __init__(self, examples: Sequence[Example], seq_len: int, bucket: int = 0,
               loss_bucket: int = 0):
    self.examples, self.seq_len = examples, seq_len
    self.bucket, self.loss_bucket = bucket, loss_bucket

  def map(self, index):
    return pack([self.examples[int(i)] for i in np.asarray(index)], self.seq_len,
                self.bucket, self.loss_bucket)


def dataset(examples: Sequence[Example], batch_size: int, seq_len: int, seed: int,
            repeat: bool = True, bucket: int = 0, loss_bucket: int = 0):
  """Shuffled (every epoch) batches of ``examples``, as a checkpointable grain stream."""
  if len(examples) < batch_size:
    raise ValueError(f"{len(examples)} examples, fewer than one batch of {batch_size}")
  ds = grain.MapDataset.range(len(examples)).seed(seed).shuffle()
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=True).map(
      PackBatch(examples, seq_len, bucket, loss_bucket))
  return ds.to_iter_dataset()


def next_token_nll(model: gemma.Gemma3, hidden: jax.Array, targets: jax.Array,
                   chunk: int = 256) -> jax.Array:
  """-log p(target) float32[N] of hidden states [N, D] through the tied head, in chunks
  (each chunk's logits are recomputed in the backward pass, never stored)."""
  n, d = hidden.shape
  chunk = max(min(chunk, n), 1)
  pad = (-n) % chunk
  h = jnp.pad(hidden, ((0, pad), (0, 0))).reshape(-1, chunk, d)
  t = jnp.pad(targets, (0, pad)).reshape(-1, chunk)
  embed = model.embed.embedding[...]

  @jax.checkpoint
  def one(args):
    h_c, t_c = args
    logits = jnp.einsum("cd,vd->cv", h_c, embed.astype(h_c.dtype),
                        preferred_element_type=jnp.float32)
    picked = jnp.take_along_axis(logits, t_c[:, None], -1)[:, 0]
    return jax.nn.logsumexp(logits, -1) - picked

  return jax.lax.map(one, (h, t)).reshape(-1)[:n]


def completion_loss(model: gemma.Gemma3, batch, chunk: int = 256):
  """Mean next-token cross-entropy over the ``loss_mask``-ed targets, and their count.
  With ``loss_at`` in the batch (``pack(bucket=...)``: the flat positions of the
  masked targets, -1 padded) the 262k-wide head runs at those positions only, the same
  loss for a fraction of the cost when prompts are long and answers short."""
  hidden = model.hidden(batch["tokens"], batch["valid"])  # [B, T, D]
  h = hidden.reshape(-1, hidden.shape[-1])
  targets = batch["targets"].reshape(-1)
  mask = batch["loss_mask"].reshape(-1).astype(jnp.float32)
  if "loss_at" in batch:
    at = batch["loss_at"]
    keep = jnp.maximum(at, 0)
    h, targets = h[keep], targets[keep]
    mask = jnp.where(at >= 0, mask[keep], 0.0)
  nll = next_token_nll(model, h, targets, chunk)
  count = mask.sum()
  return (nll * mask).sum() / jnp.maximum(count, 1.0), count


def make_step(graphdef, wrt=nnx.Param, chunk: int = 256):
  """(state, batch, base_key) → (state, metrics), jitted, state donated."""

  def step(state, batch, base_key):
    del base_key  # (no dropout in Gemma)
    model, opt = nnx.merge(graphdef, state)
    (loss, count), grads = nnx.value_and_grad(
        lambda m: completion_loss(m, batch, chunk), has_aux=True,
        argnums=nnx.DiffState(0, wrt))(model)
    opt.update(model, grads)
    return nnx.split((model, opt))[1], {"loss": loss, "grad_norm": optax.global_norm(grads),
                                       "target_tokens": count}

  return jax.jit(step, donate_argnums=0)


def trainable(cfg: gemma.GemmaConfig, embeddings: bool = False):
  """The parameters fine-tuning updates: the LoRA adapters (``cfg.lora_rank`` > 0) or
  every parameter; with ``embeddings`` the (tied) embedding matrix too, as LoRA must
  when tokens were added (new SID tokens start at the mean row or at their items'
  mean title row: without training it they stay one shared row, or text-like)."""
  if not cfg.lora_rank:
    return nnx.Param
  if embeddings:
    return nnx.Any(nnx.LoRAParam, nnx.All(nnx.Param, nnx.PathContains("embedding")))
  return nnx.LoRAParam


def copy_weights(model: gemma.Gemma3, source: gemma.Gemma3) -> None:
  """Copies every parameter of ``source`` (a model of the same config) into ``model``,
  keeping ``model``'s shardings."""
  theirs = nnx.state(source, nnx.Param).to_pure_dict()
  mine = nnx.state(model, nnx.Param)
  pure = jax.tree.map(gguf_io.place_like, mine.to_pure_dict(), theirs)
  nnx.replace_by_pure_dict(mine, pure)
  nnx.update(model, mine)


def make_optimizer(lr: float, warmup: int, total: int, weight_decay: float = 0.0,
                   clip: float = 1.0):
  total = max(int(total), 2)
  warmup = min(max(int(warmup), 1), total - 1)  # (a short run: warmup within it)
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total,
                                                end_value=lr * 0.1)
  return optax.chain(optax.clip_by_global_norm(clip),
                     optax.adamw(schedule, weight_decay=weight_decay))


def evaluator(graphdef_model, batches, chunk: int = 256):
  """validate(model_state) → {"loss", "perplexity", "inv_perplexity"} over fixed
  batches (token-weighted); the loop keeps the best ``inv_perplexity`` = exp(-loss)
  (higher is better, in [0, 1] as the loop's selection expects)."""
  loss_fn = jax.jit(lambda state, b: completion_loss(nnx.merge(graphdef_model, state), b,
                                                     chunk))

  def validate(model_state):
    total, count = 0.0, 0.0
    for b in batches:
      loss, n = loss_fn(model_state, b)
      total, count = total + float(loss) * float(n), count + float(n)
    loss = total / max(count, 1.0)
    return {"loss": loss, "perplexity": float(np.exp(min(loss, 50.0))),
            "inv_perplexity": float(np.exp(-loss))}

  return validate


def loop_config(*, num_steps: int, log_every: int, eval_every: int, seed: int,
                patience: int = 0, stop_at_step: int = -1, progress_bar: bool = False):
  """The keys ``train.train_loop`` reads."""
  return ml_collections.ConfigDict(dict(
      seed=seed, eval=dict(select_metric="inv_perplexity"),
      train=dict(num_steps=num_steps, log_every=log_every, eval_every=eval_every,
                 checkpoint_every=eval_every, patience=patience, stop_at_step=stop_at_step,
                 progress_bar=progress_bar, validate_at_start=True)))


def fine_tune(cfg: gemma.GemmaConfig, params: dict | None, train_examples, val_examples,
              workdir: str, *, batch_size: int = 8, seq_len: int = 256, lr: float = 1e-4,
              warmup: int = 10, num_steps: int = 100, log_every: int = 10,
              eval_every: int = 50, seed: int = 0, mesh=None, chunk: int = 256,
              stop_at_step: int = -1, init_model: gemma.Gemma3 | None = None,
              wrt=None, bucket: int = 0, loss_bucket: int = 0, patience: int = 0):
  """Fine-tunes (``cfg.lora_rank`` > 0: LoRA; else every parameter; ``wrt``: the
  parameters a filter selects, e.g. ``trainable(cfg, embeddings=True)``) from ``params``
  (``gguf_io.load_gguf``'s layout), or from ``init_model`` (a model of this ``cfg``,
  e.g. an earlier stage's), or random weights when neither, and returns the loop's
  result (``train.LoopResult``) and the model state of the best validation loss. A
  workdir with a checkpoint resumes from it (the starting weights are then unused)."""
  from s2gr_jax import metric_writer  # pylint: disable=g-import-not-at-top
  if mesh is None:
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1,
                                                             rules=())))
  wrt = wrt if wrt is not None else trainable(cfg)
  tx = make_optimizer(lr, warmup, num_steps)
  graphdef, model_graphdef, state = train_lib.create_state(
      lambda rngs: gemma.Gemma3(cfg, rngs=rngs), tx, seed, mesh, wrt=wrt)
  ckpts = ckpt_lib.Checkpoints(workdir, 2)
  if ckpts.latest_step() is None and (params is not None or init_model is not None):
    model, opt = nnx.merge(graphdef, state)
    if params is not None:
      gguf_io.set_params(model, params)
    else:
      copy_weights(model, init_model)
    state = nnx.split((model, opt))[1]
  val = [{k: jnp.asarray(v) for k, v in b.items()} for b in
         dataset(val_examples, min(batch_size, len(val_examples)), seq_len, seed,
                 repeat=False, bucket=bucket, loss_bucket=loss_bucket)]
  writer = metric_writer.MetricWriter(workdir)
  try:
    result = train_lib.train_loop(
        loop_config(num_steps=num_steps, log_every=log_every, eval_every=eval_every,
                    seed=seed, stop_at_step=stop_at_step, patience=patience),
        train_step=make_step(graphdef, wrt, chunk), state=state, mesh=mesh,
        train_ds=dataset(train_examples, batch_size, seq_len, seed, bucket=bucket,
                         loss_bucket=loss_bucket),
        validate=evaluator(model_graphdef, val, chunk), ckpts=ckpts, writer=writer,
        examples_per_step=batch_size)
    best = result.state[0]
    if ckpts.has_best():
      best, _ = ckpts.restore_best(best)
  finally:
    writer.close()
    ckpts.close()
  return result, best


def read_jsonl(path: str, tok: tok_lib.Tokenizer, chat: bool = False) -> list[Example]:
  """Examples from a JSON-lines file of {"prompt": ..., "completion": ...} (``chat``:
  the prompt goes through Gemma's chat template and the completion ends the turn)."""
  if not os.path.isfile(path):
    raise errors.MissingFileError(f"{path}: no such file")
  out = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        prompt, completion = str(row["prompt"]), str(row["completion"])
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise errors.DataError(f"{path}:{n}: expected a JSON object with 'prompt' and "
                               f"'completion' ({type(e).__name__}: {e})") from e
      if chat:
        prompt, completion = tok.chat_prompt(prompt), completion + tok_lib.END_OF_TURN
      out.append(Example(tuple(tok.encode(prompt, add_bos=True)),
                         tuple(tok.encode(completion))))
  if not out:
    raise errors.DataError(f"{path}: no examples")
  return out
