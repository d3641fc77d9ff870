"""SIDReasoner on Gemma 3: the stages of ``configs/sidreasoner_*.py``.

``model.name = 'sidreasoner'``; ``config.stage`` picks one stage (after ``tokenize``,
which builds or reuses the SIDs), '' runs them all in order. Each stage writes to its
own folder of the workdir and resumes there (``checkpoints/last``); a later stage
starts from the best checkpoint of the latest earlier stage that ran.

| stage      | what it trains on                                   | folder      | selection |
|------------|-----------------------------------------------------|-------------|-----------|
| `align`    | the alignment streams (``corpus.alignment_samples``) | `align/`    | val loss (next SID) |
| `activate` | think-then-SID samples (``corpus.reasoning_samples``) | `activate/` | val loss (thought + SID) |
| `rl`       | GRPO with thinking rollouts (``lm_grpo``)             | `rl/`       | val NDCG@10 |
| `eval`     | — : every model found (base, align, activate, rl), both modes, both protocols, beside popularity, the transition rows and the ``reasoner.eval.compare`` runs | `results.md` | — |

**Vocabulary**: the SID tokens ``<a_i><b_j><c_k><d_m>`` of the run's table
(``sid_vocab``) and ``<think>``, ``</think>`` are added to Gemma's tokenizer. Their
embedding rows start at the mean row, except that with ``reasoner.sid_init='text'``
(the default) each SID token starts at the mean title embedding of the items that
carry its code: the model starts with SID tokens it can tell apart and that relate to
the titles. With LoRA (``reasoner.lora_rank`` > 0) the adapters and, with
``reasoner.train_embeddings``, the tied embedding train (without it the new tokens
would keep their first rows).

**Prompts**: non-thinking (stage 1 and the non-thinking evaluation): the next-SID
question, then an empty think block ``<think>\\n</think>\\n\\n`` in the prompt, the SID
as the answer. Thinking (stage 2, GRPO, the thinking evaluation): the think-then-SID
question; the answer is ``<think>\\n…\\n</think>\\n\\n`` then the SID. Evaluation: the
non-thinking prompt, or a greedy thought (≤ ``eval.think_tokens``, cut at
``</think>``), then the catalogue-constrained beam search over SIDs
(``generate.SidGenerator`` + ``decoding.beam_search``: invalid SIDs never appear).

**Protocols**: ``spec`` = SPEC §0 (leave-one-out, history ≤ ``data.max_history``),
``sidr`` = the same targets with history ≤ 10 (SIDReasoner's window; its own split is a
chronological 8:1:1 over sliding windows, which this does not reproduce). Every row of a
table is scored on the same users (``reasoner.eval.users``, drawn once from the seed).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from typing import Any

from flax import nnx
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from s2gr_jax import checkpoints as ckpt_lib
from s2gr_jax import config_keys
from s2gr_jax import decoding
from s2gr_jax import errors
from s2gr_jax import fileio
from s2gr_jax import metrics as metrics_lib
from s2gr_jax.lm import corpus
from s2gr_jax.lm import gemma
from s2gr_jax.lm import generate
from s2gr_jax.lm import lm_grpo
from s2gr_jax.lm import sft
from s2gr_jax.lm import sid_vocab
from s2gr_jax.lm import tokenizer as tok_lib

log = logging.getLogger(__name__)

STAGES = ("align", "activate", "rl", "eval")
TRAINED = ("align", "activate", "rl")  # the stages that make a model, in order
MODES = ("plain", "think")
PROTOCOLS = ("spec", "sidr")
SIDR_HISTORY = 10


# --- the language model and its vocabulary -------------------------------------------------

@dataclasses.dataclass
class Setup:
  """The tokenizer with the SID and think tokens, and the model config to match."""

  tok: tok_lib.Tokenizer
  vocab: sid_vocab.SidVocab
  cfg: gemma.GemmaConfig  # vocab_size includes the added tokens
  base_vocab: int
  params: dict | None  # pretrained weights (load_gguf's layout); None: the tiny LM
  table: Any
  think_open: int
  think_close: int
  separator: tuple[int, ...]  # "\n\n" after </think>
  seed: int = 0
  sid_init: str = "mean"  # 'mean' | 'text': the SID tokens' first rows (base_model)
  think_init: str = "mean"  # 'mean' | 'turn': <think>, </think> rows (start_model)
  item_text: Any = None  # the dataset's item_text (titles for sid_init='text')
  _text_rows: Any = dataclasses.field(default=None, repr=False)

  @functools.cached_property
  def codes(self) -> np.ndarray:
    return self.table.lookup()  # [num_items + 1, L], row 0 unused

  def sid_text(self, item: int) -> str:
    return self.vocab.text(self.codes[int(item)])

  @functools.cached_property
  def level_ids(self) -> jax.Array:
    return jnp.asarray(self.vocab.level_ids)

  def base_model(self) -> gemma.Gemma3:
    """The pretrained model (or the random tiny one), embedding grown for the added
    tokens: new rows at the mean row, and with ``sid_init='text'`` each SID token at
    the mean title embedding of its items (``sid_vocab.rows_from_text``)."""
    from s2gr_jax import lm  # pylint: disable=g-import-not-at-top
    model = lm.build(dataclasses.replace(self.cfg, vocab_size=self.base_vocab),
                     self.params, seed=self.seed)
    if self.sid_init == "text":
      rows = self.text_rows(np.asarray(model.embed.embedding[...]))
    sid_vocab.grow_embedding(model, self.cfg.vocab_size)
    if self.sid_init == "text":
      sid_vocab.set_rows(model, self.vocab.all_ids(), rows)
    return model

  def copy_turn_rows(self, model: gemma.Gemma3) -> None:
    """``<think>`` / ``</think>`` := ``model``'s ``<start_of_turn>`` / ``<end_of_turn>``
    rows (``think_init='turn'``). With the tied head ``</think>`` is then as likely as
    the turn's end wherever the model would end a turn, and stage 2 only has to tell
    the two apart; from the mean row, 40 steps did not lift it above ``<end_of_turn>``."""
    table = model.embed.embedding[...]
    like = [self.tok.token_id(t) for t in (tok_lib.START_OF_TURN, tok_lib.END_OF_TURN)]
    sid_vocab.set_rows(model, np.asarray([self.think_open, self.think_close]),
                       np.asarray(table[np.asarray(like)]))

  def text_rows(self, table: np.ndarray) -> np.ndarray:
    """The SID tokens' rows from the items' titles (computed once per process)."""
    if self._text_rows is None:
      start = time.time()
      codes = self.codes[1:]
      texts = [self.tok.encode(corpus.title(self.item_text, i))
               for i in range(1, len(codes) + 1)]
      self._text_rows = sid_vocab.rows_from_text(table, codes, self.vocab.sizes, texts)
      log.info("SID token rows from %d item titles (%.1f s)", len(texts),
               time.time() - start)
    return self._text_rows

  def prompt(self, history, think: bool, max_len: int = 0) -> list[int]:
    """The token ids of the question over ``history`` (item ids, oldest first): the
    non-thinking prompt (ending with the empty think block) or the thinking one (ending
    with ``<think>``). With ``max_len`` the oldest items are dropped until it fits."""
    hist = list(history)
    while True:
      sids = ", ".join(self.sid_text(i) for i in hist)
      system, user = (corpus.reasoning_messages(sids) if think
                      else corpus.next_sid_messages(sids))
      text = self.tok.chat_prompt(user, system)
      text += corpus.THINK_OPEN if think else corpus.EMPTY_THINK
      ids = self.tok.encode(text, add_bos=True)
      if not max_len or len(ids) <= max_len or len(hist) <= 1:
        return ids[-max_len:] if max_len else ids
      hist = hist[1:]


def make_setup(rcfg, table, seed: int = 0, item_text=None) -> Setup:
  """The LM of ``reasoner.lm`` ('gemma3_270m': the GGUF, fetched on first use, or
  ``reasoner.lm_path``; 'tiny': random weights of the tiny config and a byte-level
  vocabulary, for tests) with the SID and think tokens added."""
  overrides = dict(lora_rank=int(rcfg.lora_rank), lora_alpha=float(rcfg.lora_alpha),
                   dtype=rcfg.dtype, remat=bool(rcfg.remat))
  if rcfg.lm == "tiny":
    tok = tok_lib.Tokenizer(*tok_lib.byte_vocab())
    cfg, params = gemma.GemmaConfig.tiny(vocab_size=tok.base_size, **overrides), None
  elif rcfg.lm == "gemma3_270m":
    from s2gr_jax.lm import gguf_io  # pylint: disable=g-import-not-at-top
    from s2gr_jax.lm import weights  # pylint: disable=g-import-not-at-top
    path = rcfg.lm_path or weights.fetch_gguf()
    cfg, params = gguf_io.load_gguf(path, **overrides)
    tok = tok_lib.Tokenizer.from_gguf(path)
  else:
    raise ValueError(f"reasoner.lm={rcfg.lm!r}: expected 'gemma3_270m' or 'tiny'")
  base_vocab = tok.vocab_size
  vocab = sid_vocab.SidVocab.for_table(table, tok)
  think_open, think_close = tok.add_tokens([corpus.THINK_OPEN, corpus.THINK_CLOSE])
  cfg = dataclasses.replace(cfg, vocab_size=tok.vocab_size)
  return Setup(tok=tok, vocab=vocab, cfg=cfg, base_vocab=base_vocab, params=params,
               table=table, think_open=think_open, think_close=think_close,
               separator=tuple(tok.encode("\n\n")), seed=seed,
               sid_init=str(rcfg.get("sid_init", "mean")),
               think_init=str(rcfg.get("think_init", "mean")), item_text=item_text)


def setup_of(ctx) -> Setup:
  if ctx.lm is None:
    ctx.lm = make_setup(ctx.config.reasoner, ctx.need_table("sidreasoner"), ctx.config.seed,
                        ctx.dataset.item_text)
  return ctx.lm


def stage_dir(ctx, stage: str):
  return fileio.join(ctx.workdir, stage)


def has_model(ctx, stage: str) -> bool:
  return fileio.exists(fileio.join(stage_dir(ctx, stage), "summary.json"))


def load_stage_model(setup: Setup, folder) -> gemma.Gemma3:
  """The best checkpoint of a stage's folder, into the base model's structure."""
  model = setup.base_model()
  ckpts = ckpt_lib.Checkpoints(folder, 1)
  try:
    if not ckpts.has_best():
      raise errors.MissingFileError(f"{folder}: no best checkpoint")
    state, _ = ckpts.restore_best(nnx.state(model))
  finally:
    ckpts.close()
  nnx.update(model, state)
  return model


def start_model(ctx, stage: str) -> tuple[gemma.Gemma3, str]:
  """The model a stage starts from: the best of the latest earlier stage that has
  one, else the base model. The first stage that writes thoughts (``activate``, or
  ``rl`` without it) sets the think tokens' rows as ``reasoner.think_init`` says (no
  earlier stage learns them: stage 1's answers hold no thought)."""
  setup = setup_of(ctx)
  earlier = TRAINED[:TRAINED.index(stage)]
  model, source = None, "base"
  for prev in reversed(earlier):
    if has_model(ctx, prev):
      log.info("Stage %s starts from stage %s's best checkpoint", stage, prev)
      model, source = load_stage_model(setup, stage_dir(ctx, prev)), prev
      break
  if model is None:
    log.info("Stage %s starts from the base model", stage)
    model = setup.base_model()
  thinks = ("activate", "rl")
  if setup.think_init == "turn" and stage in thinks and source not in thinks:
    log.info("Stage %s: <think>, </think> start as copies of the turn tokens' rows "
             "(reasoner.think_init='turn')", stage)
    setup.copy_turn_rows(model)
  return model, source


def _histories(ctx, split: str, users: np.ndarray, max_history: int):
  """(histories, targets) of ``users`` for 'val' or 'test' (leave-one-out)."""
  offset = {"val": 2, "test": 1}[split]
  hists, targets = [], []
  for u in users:
    seq = list(ctx.dataset.sequences[int(u)])
    pos = len(seq) - offset
    hists.append(seq[max(0, pos - max_history):pos])
    targets.append(seq[pos])
  return hists, np.asarray(targets, np.int32)


def _users(ctx, n: int, salt: int = 0) -> np.ndarray:
  total = ctx.dataset.num_users
  if n <= 0 or n >= total:
    return np.arange(total)
  return np.sort(np.random.default_rng(ctx.config.seed + salt).choice(total, n,
                                                                      replace=False))


def write_json(path, obj) -> None:
  """A JSON output of the run, written by process 0 only."""
  if jax.process_index() == 0:
    fileio.write_json(path, obj, indent=2, sort_keys=True)


def _write_summary(ctx, stage: str, info: dict) -> None:
  write_json(fileio.join(stage_dir(ctx, stage), "summary.json"), info)


# --- stages 1 and 2: supervised fine-tuning ----------------------------------------------

def _examples(setup: Setup, samples, empty_think: bool) -> list[sft.Example]:
  out = []
  for s in samples:
    prompt, answer = corpus.render(s, setup.tok, empty_think=empty_think)
    out.append(sft.Example(tuple(prompt), tuple(answer)))
  return out


def _cap(items: list, n: int, seed: int) -> list:
  if n <= 0 or n >= len(items):
    return items
  idx = np.random.default_rng(seed).choice(len(items), n, replace=False)
  return [items[i] for i in np.sort(idx)]


def _weights(spec: str) -> dict[str, float]:
  out = {}
  for part in filter(None, (p.strip() for p in str(spec).split(","))):
    name, _, value = part.partition("=")
    try:
      out[name.strip()] = float(value)
    except ValueError as e:
      raise ValueError(f"reasoner.align.weights={spec!r}: expected 'stream=weight,...'"
                       ) from e
  return out


def _val_samples(ctx, setup: Setup, think: bool, n: int):
  """Validation samples: validation users' histories and targets (never trained on)."""
  users = _users(ctx, n, salt=17)
  hists, targets = _histories(ctx, "val", users, ctx.config.reasoner.max_history)
  item_text = ctx.dataset.item_text
  out = []
  for hist, target in zip(hists, targets):
    sids = ", ".join(setup.sid_text(i) for i in hist)
    if think:
      system, user = corpus.reasoning_messages(sids)
      why = corpus.rationale(item_text, hist, int(target),
                             style=ctx.config.reasoner.activate.rationale_style)
      answer = (f"{corpus.THINK_OPEN}\n{why}\n{corpus.THINK_CLOSE}\n\n"
                f"{setup.sid_text(int(target))}")
    else:
      system, user = corpus.next_sid_messages(sids)
      answer = setup.sid_text(int(target))
    out.append(corpus.Sample("val", answer, user=user, system=system))
  return out


class FineTune:
  """Stage 1 (``align``) or 2 (``activate``): completion-only SFT of the LM (LoRA or
  full) through ``sft.fine_tune``; resumable in ``WORKDIR/<stage>/``."""

  def __init__(self, name: str):
    self.name = name

  def samples(self, ctx, setup: Setup):
    rcfg, data = ctx.config.reasoner, ctx.dataset
    sequences = [np.asarray(s) for s in data.sequences]
    if self.name == "align":
      a = rcfg.align
      streams = [s.strip() for s in str(a.streams).split(",") if s.strip()]
      samples = corpus.alignment_samples(
          sequences, data.item_text, setup.sid_text, max_history=rcfg.max_history,
          streams=streams, domain="", narratives=a.narratives or None, seed=ctx.config.seed)
      weights = _weights(a.weights)
      samples = corpus.mix(samples, weights, seed=ctx.config.seed) if weights else samples
      return samples
    return corpus.reasoning_samples(sequences, data.item_text, setup.sid_text,
                                    max_history=rcfg.max_history,
                                    rationales=rcfg.activate.rationales or None,
                                    style=rcfg.activate.rationale_style)

  def run(self, ctx) -> None:
    rcfg = ctx.config.reasoner
    s = rcfg[self.name]
    if s.steps <= 0:
      log.info("Stage %s: reasoner.%s.steps = 0, skipped", self.name, self.name)
      return
    from s2gr_jax import parallel  # pylint: disable=g-import-not-at-top
    parallel.check_batch_size(s.batch_size, ctx.mesh, f"reasoner.{self.name}.batch_size")
    setup = setup_of(ctx)
    t0 = time.time()
    samples = self.samples(ctx, setup)
    counts = {}
    for x in samples:
      counts[x.stream] = counts.get(x.stream, 0) + 1
    samples = _cap(samples, int(s.max_examples), ctx.config.seed)
    train = _examples(setup, samples, empty_think=True)
    val = _examples(setup, _val_samples(ctx, setup, self.name == "activate",
                                        rcfg.val_examples), empty_think=True)
    lengths = np.asarray([len(e.prompt) + len(e.completion) for e in train])
    log.info("Stage %s: %d samples (streams %s), %d used; %d validation samples; "
             "tokens a sample: mean %.0f, max %d (seq_len %d); %d steps of %d = %.2f "
             "passes", self.name, sum(counts.values()), counts, len(train), len(val),
             lengths.mean(), lengths.max(), rcfg.seq_len, s.steps, s.batch_size,
             s.steps * s.batch_size / max(len(train), 1))
    if self.name == "activate":
      _log_thought_lengths(setup, train, rcfg)
    init, source = start_model(ctx, self.name)
    result, best = sft.fine_tune(
        setup.cfg, None, train, val, stage_dir(ctx, self.name),
        batch_size=s.batch_size, seq_len=rcfg.seq_len, lr=s.lr, warmup=s.warmup,
        num_steps=s.steps, log_every=s.log_every, eval_every=s.eval_every,
        seed=ctx.config.seed, mesh=ctx.mesh, chunk=rcfg.chunk, init_model=init,
        wrt=sft.trainable(setup.cfg, rcfg.train_embeddings), bucket=rcfg.bucket,
        loss_bucket=rcfg.loss_bucket, patience=s.patience,
        stop_at_step=s.get("stop_at_step", -1))
    del best, init
    if not result.finished:
      log.info("Stage %s stopped at step %d; rerun the same command to continue.",
               self.name, result.step)
      ctx.stopped = True
      return
    _write_summary(ctx, self.name, {
        "from": source, "samples": int(sum(counts.values())), "streams": counts,
        "used": len(train), "steps": result.step, "best_step": result.best_step,
        "batch_size": s.batch_size, "mean_tokens": float(lengths.mean()),
        "passes": result.step * s.batch_size / max(len(train), 1),
        "wall_s": result.wall_s, "compile_s": result.compile_s,
        "stage_wall_s": time.time() - t0, "stopped_early": result.stopped_early})


def _log_thought_lengths(setup: Setup, examples, rcfg) -> None:
  """Stage 2's rationales against the thinking budgets: a thought cut before its end
  never names the next item's category (the rollouts and thinking rows then emit the SID
  after a cut thought), so a budget below most rationales is warned about."""
  # the tokens a thought generates after <think>, up to and including </think>
  lengths = [e.completion.index(setup.think_close) - e.completion.index(setup.think_open)
             for e in examples
             if setup.think_open in e.completion and setup.think_close in e.completion]
  if not lengths:
    return
  lengths = np.asarray(lengths)
  log.info("Stage activate: rationale tokens median %d, 90th percentile %d (style %r)",
           np.median(lengths), np.percentile(lengths, 90), rcfg.activate.rationale_style)
  for key in ("rl", "eval"):
    budget = int(rcfg[key].think_tokens)
    cut = float((lengths > budget).mean())
    if cut > 0.5:
      log.warning("Stage activate: %.0f%% of the rationales are longer than "
                  "reasoner.%s.think_tokens=%d; those thoughts will be cut before their "
                  "end (raise it, or use reasoner.activate.rationale_style='categories')",
                  100 * cut, key, budget)


# --- ranking with the LM --------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("beam", "think_tokens", "think_close",
                                             "separator"))
def _rank(model, level_ids, index, tokens, valid, *, beam: int, think_tokens: int,
          think_close: int, separator: tuple[int, ...]):
  """Top-``beam`` items [B, beam] (and the thoughts [B, think_tokens]) of prompts."""
  if think_tokens > 0:
    think = generate.generate(model, tokens, valid, jax.random.key(0),
                              max_new_tokens=think_tokens, greedy=True, eos=think_close)
    tokens, valid, _ = lm_grpo.sid_prompt(tokens, valid, think, think_close, separator)
  else:
    think = jnp.zeros((tokens.shape[0], 0), jnp.int32)
  gen = generate.SidGenerator(model, level_ids)
  items, _ = decoding.recommend(gen, {"prompt_tokens": tokens, "prompt_valid": valid},
                                index, beam=beam)
  return items, think


def _pad(prompts, multiple: int = 32):
  length = -(-max(len(p) for p in prompts) // multiple) * multiple
  return generate.pad_prompts(prompts, length)


def rank_histories(model, setup: Setup, index, histories, *, think: bool, beam: int,
                   batch_size: int, think_tokens: int):
  """(items int32[N, beam], thoughts as text) of the LM over ``histories``."""
  out, thoughts = [], []
  n = len(histories)
  for start in range(0, n, batch_size):
    chunk = list(histories[start:start + batch_size])
    real = len(chunk)
    chunk += [chunk[-1]] * (batch_size - real)  # a full last batch: one program
    prompts = [setup.prompt(h, think) for h in chunk]
    tokens, valid = _pad(prompts)
    items, th = _rank(model, setup.level_ids, index, tokens, valid, beam=beam,
                      think_tokens=think_tokens if think else 0,
                      think_close=setup.think_close, separator=setup.separator)
    out.append(np.asarray(items)[:real])
    if think:
      thoughts += [setup.tok.decode([t for t in row if t != tok_lib.PAD])
                   for row in np.asarray(th)[:real]]
  return np.concatenate(out), thoughts


def lm_metrics(items, targets, ks) -> dict[str, float]:
  sums = metrics_lib.rank_metric_sums(jnp.asarray(items), jnp.asarray(targets),
                                      jnp.ones(len(targets), jnp.float32), tuple(ks))
  return metrics_lib.finalize(jax.device_get(sums))


# --- stage 3: GRPO --------------------------------------------------------------------------

class PromptBatch(grain.transforms.Map):
  def __init__(self, prompts, targets, length: int):
    self.prompts, self.targets, self.length = prompts, targets, length

  def map(self, index):
    rows = [int(i) for i in np.asarray(index)]
    tokens, valid = generate.pad_prompts([self.prompts[i] for i in rows], self.length)
    return {"prompt_tokens": np.asarray(tokens), "prompt_valid": np.asarray(valid),
            "target_item": self.targets[rows]}


class Reason:
  """Stage 3 (``rl``): GRPO (``lm_grpo``) from the latest earlier stage's model, the
  reference (KL anchor) frozen at it; prompts from the training part of every user
  (the thinking question); validation = ``eval.select_metric`` (thinking mode with
  ``rl.val_think``) on
  ``reasoner.rl.val_users`` validation users; resumable in ``WORKDIR/rl/``."""

  name = "rl"

  def run(self, ctx) -> None:
    from s2gr_jax import metric_writer  # pylint: disable=g-import-not-at-top
    from s2gr_jax import train as train_lib  # pylint: disable=g-import-not-at-top
    from s2gr_jax.rl import rewards as rewards_lib  # pylint: disable=g-import-not-at-top
    config, rcfg = ctx.config, ctx.config.reasoner
    r = rcfg.rl
    if r.steps <= 0:
      log.info("Stage rl: reasoner.rl.steps = 0, skipped")
      return
    from s2gr_jax import parallel  # pylint: disable=g-import-not-at-top
    parallel.check_batch_size(r.batch_users, ctx.mesh, "reasoner.rl.batch_users")
    setup = setup_of(ctx)
    t0 = time.time()
    init, source = start_model(ctx, "rl")
    pairs = list(corpus.history_pairs([np.asarray(s) for s in ctx.dataset.sequences],
                                      rcfg.max_history))
    pairs = _cap(pairs, int(r.max_examples), config.seed)
    prompts = [setup.prompt(h, think=True, max_len=r.max_prompt) for _, _, h, _ in pairs]
    targets = np.asarray([t for _, _, _, t in pairs], np.int32)
    ds = (grain.MapDataset.range(len(prompts)).seed(config.seed + 7919).shuffle()
          .repeat().batch(r.batch_users, drop_remainder=True)
          .map(PromptBatch(prompts, targets, r.max_prompt)).to_iter_dataset())
    settings = lm_grpo.LmGrpoSettings(
        group=r.group, think_tokens=r.think_tokens, temperature=r.temperature,
        kl_coef=r.kl_coef, micro_batch=r.micro_batch, think_close=setup.think_close,
        separator=setup.separator, chunk=rcfg.chunk)
    wrt = sft.trainable(setup.cfg, rcfg.train_embeddings)
    graphdef, model_graphdef, state = train_lib.create_state(
        lambda rngs: gemma.Gemma3(setup.cfg, rngs=rngs),
        sft.make_optimizer(r.lr, r.warmup, r.steps), config.seed, ctx.mesh, wrt=wrt)
    ckpts = ckpt_lib.Checkpoints(stage_dir(ctx, "rl"), 2)
    if ckpts.latest_step() is None:
      model, opt = nnx.merge(graphdef, state)
      sft.copy_weights(model, init)
      state = nnx.split((model, opt))[1]
    ref_state = jax.tree.map(lambda x: x.copy(), state[0])
    del init
    index = decoding.make_index(setup.table, "prefix")
    tables = rewards_lib.RewardTables.from_table(setup.table)
    val_users = _users(ctx, r.val_users, salt=29)
    val_hists, val_targets = _histories(ctx, "val", val_users, rcfg.max_history)

    def validate(model_state):
      model = nnx.merge(model_graphdef, model_state)
      items, _ = rank_histories(model, setup, index, val_hists, think=r.val_think,
                                beam=config.eval.beam_size,
                                batch_size=rcfg.eval.batch_size,
                                think_tokens=rcfg.eval.think_tokens)
      return lm_metrics(items, val_targets, config.eval.ks)

    loop_cfg = ml_collections.ConfigDict(dict(
        seed=config.seed, eval=dict(select_metric=config.eval.select_metric),
        train=dict(num_steps=r.steps, log_every=r.log_every, eval_every=r.eval_every,
                   checkpoint_every=r.eval_every, patience=r.patience,
                   stop_at_step=r.get("stop_at_step", -1), progress_bar=False,
                   validate_at_start=True)))
    log.info("GRPO on the LM from %s: %d prompts, %d users x %d rollouts a step, "
             "thoughts <= %d tokens, KL %g, lr %g, %d steps", source, len(prompts),
             r.batch_users, r.group, r.think_tokens, r.kl_coef, r.lr, r.steps)
    writer = metric_writer.MetricWriter(stage_dir(ctx, "rl"))
    try:
      loop = train_lib.train_loop(
          loop_cfg, train_step=lm_grpo.make_step(graphdef, model_graphdef, settings, wrt),
          state=state, mesh=ctx.mesh, train_ds=ds, validate=validate, ckpts=ckpts,
          writer=writer, examples_per_step=r.batch_users,
          step_args=(ref_state, index, tables, setup.level_ids))
    finally:
      writer.close()
      ckpts.close()
    if not loop.finished:
      log.info("Stage rl stopped at step %d; rerun the same command to continue.",
               loop.step)
      ctx.stopped = True
      return
    _write_summary(ctx, "rl", {
        "from": source, "prompts": len(prompts), "steps": loop.step,
        "best_step": loop.best_step, "users_per_step": r.batch_users, "group": r.group,
        "wall_s": loop.wall_s, "compile_s": loop.compile_s, "eval_s": loop.eval_s,
        "stage_wall_s": time.time() - t0, "stopped_early": loop.stopped_early})


# --- evaluation ------------------------------------------------------------------------------

LABELS = {"base": "Gemma 3 270M base", "align": "+ stage 1 (alignment)",
          "activate": "+ stage 2 (reasoning activation)", "rl": "+ stage 3 (GRPO)"}


def _compare_rows(ctx, spec: str, users, splits, histories: dict[str, int]):
  """{protocol: {split: {label: metrics}}} of other runs' best checkpoints (TIGER,
  S²GR, ... on the same SIDs) over the same users and histories."""
  from s2gr_jax import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  from s2gr_jax import models  # pylint: disable=g-import-not-at-top
  from s2gr_jax import parallel  # pylint: disable=g-import-not-at-top
  from s2gr_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  from s2gr_jax.data import batches  # pylint: disable=g-import-not-at-top
  from s2gr_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from s2gr_jax.sid import table as table_lib  # pylint: disable=g-import-not-at-top
  out: dict = {p: {s: {} for s in splits} for p in histories}
  for part in filter(None, (p.strip() for p in str(spec).split(","))):
    label, _, workdir = part.partition("=")
    if not workdir:
      raise ValueError(f"reasoner.eval.compare={spec!r}: expected 'label=workdir,...'")
    cfg_path = fileio.join(workdir, "config.json")
    if not fileio.exists(cfg_path):
      raise errors.MissingFileError(f"reasoner.eval.compare: {cfg_path} not found")
    their = ml_collections.ConfigDict(fileio.read_json(cfg_path))
    other = table_lib.SidTable.load(fileio.join(workdir, "sid"))
    if not np.array_equal(other.codes, ctx.table.codes):
      raise errors.DataError(f"reasoner.eval.compare: {workdir} uses other Semantic IDs "
                             "(set tokenizer.from_workdir to it so both share one table)")
    entry = models.get(their.model.name)
    make_model = models.build(their.model, ctx.table, user_buckets=their.data.user_buckets,
                              max_history=their.data.max_history)
    _, model_graphdef, state = train_lib.create_state(
        make_model, train_lib.make_optimizer(their.train), their.seed, ctx.mesh,
        parallel.rules_from_config(their.mesh), wrt=train_lib.trainable(their.train.trainable))
    ck = ckpt_lib.Checkpoints(workdir, 1)
    try:
      model_state, _ = ck.restore_best(state[0])
    finally:
      ck.close()
    index = decoding.make_index(ctx.table, entry.search)
    step = evaluate_lib.make_eval_step(model_graphdef, ctx.mesh, beam=ctx.config.eval.beam_size,
                                       ks=tuple(ctx.config.eval.ks))
    for protocol, max_history in histories.items():
      pipes = pipeline.Pipelines(
          source=ctx.dataset.source, split=ctx.split, codes=ctx.table.lookup(),
          user_buckets=batches.hash_users(ctx.dataset.user_ids, their.data.user_buckets),
          max_history=min(max_history, their.data.max_history),
          length_buckets=_buckets(their.data.length_buckets,
                                  min(max_history, their.data.max_history)),
          sequences=ctx.dataset.sequences)
      for s in splits:
        out[protocol][s][label] = evaluate_lib.evaluate(
            step, model_state, pipes.eval_batches(s, ctx.eval_batch_size, users), index,
            ctx.mesh)
  return out


# Each scored row of the eval stage is kept in the workdir as it finishes, so that an
# eval killed half way (hours of thinking rows on a CPU) resumes at the first row it had
# not scored. A row is reused only when its fingerprint matches: the result-changing
# config (less the keys that only choose which rows to score), the users and the
# stage's summary (a retrained stage scores again).
ROWS_FILE = "eval_rows.json"
_ROW_KEYS = ("stage", "reasoner.eval.models", "reasoner.eval.modes",
             "reasoner.eval.protocols", "reasoner.eval.splits", "reasoner.eval.compare",
             "reasoner.eval.keep_thoughts")


def _row_fingerprint(config, users: np.ndarray, summary: dict | None) -> str:
  key = {"config": config_keys.comparable(config.to_dict(), ignore=_ROW_KEYS),
         "users": [int(u) for u in users], "stage": summary}
  return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _read_rows(path) -> dict:
  """The rows an earlier eval of this workdir scored; a damaged file is set aside
  with a warning (its rows are scored again), never trusted."""
  if not fileio.exists(path):
    return {}
  try:
    rows = fileio.read_json(path)
  except errors.DataError as e:
    log.warning("eval: %s; its rows are scored again", e)
    return {}
  if not isinstance(rows, dict):
    log.warning("eval: %s is not a JSON object; its rows are scored again", path)
    return {}
  return rows


def _write_rows(path, rows: dict) -> None:
  """Written whole to a temporary file, then moved over the old one: a kill mid-write
  leaves the old file."""
  if jax.process_index() == 0:
    tmp = fileio.path(str(path) + ".tmp")
    fileio.write_json(tmp, rows, sort_keys=True)
    tmp.replace(path)


def _buckets(buckets, max_history: int) -> tuple[int, ...]:
  """History-length buckets that end at ``max_history``."""
  return tuple(b for b in buckets if b < max_history) + (max_history,)


def _baseline_rows(ctx, users, splits, histories: dict[str, int]):
  from s2gr_jax import baselines as baselines_lib  # pylint: disable=g-import-not-at-top
  from s2gr_jax.data import batches  # pylint: disable=g-import-not-at-top
  from s2gr_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  base = baselines_lib.Baselines(ctx.split.training_histories(ctx.dataset.sequences),
                                 ctx.dataset.num_items)
  out = {}
  for protocol, max_history in histories.items():
    pipes = pipeline.Pipelines(
        source=ctx.dataset.source, split=ctx.split, codes=ctx.table.lookup(),
        user_buckets=batches.hash_users(ctx.dataset.user_ids, ctx.config.data.user_buckets),
        max_history=max_history,
        length_buckets=_buckets(ctx.config.data.length_buckets, max_history),
        sequences=ctx.dataset.sequences)
    out[protocol] = {s: base.evaluate(pipes.eval_batches(s, ctx.eval_batch_size, users),
                                      tuple(ctx.config.eval.ks)) for s in splits}
  return out


def _names(spec: str, allowed, what: str) -> list[str]:
  names = [n.strip() for n in str(spec).split(",") if n.strip()]
  bad = [n for n in names if n not in allowed]
  if bad:
    raise ValueError(f"reasoner.eval.{what}={spec!r}: unknown {bad}; available: "
                     f"{list(allowed)}")
  return names


class ReasonEval:
  """The ``eval`` stage (module docstring): ``results.json``, ``results.md`` and
  ``eval_thoughts.jsonl`` (the first thoughts of each thinking evaluation); each row
  is kept in ``eval_rows.json`` as it is scored, and an eval run again with the same
  settings (after a kill) reads the rows it has instead of scoring them again."""

  name = "eval"

  def run(self, ctx) -> None:
    config, rcfg = ctx.config, ctx.config.reasoner
    e = rcfg.eval
    setup = setup_of(ctx)
    which = _names(e.models, ("base",) + TRAINED, "models")
    modes = _names(e.modes, MODES, "modes")
    protocols = _names(e.protocols, PROTOCOLS, "protocols")
    splits = _names(e.splits, ("test", "val"), "splits")
    histories = {"spec": config.data.max_history, "sidr": SIDR_HISTORY}
    histories = {p: histories[p] for p in protocols}
    users = _users(ctx, e.users)
    index = decoding.make_index(setup.table, "prefix")
    done_path = fileio.join(ctx.workdir, ROWS_FILE)
    done = _read_rows(done_path)
    results: dict[str, Any] = {"eval/users": len(users), "eval/beam_size":
                               config.eval.beam_size, "data/name": ctx.dataset.name}
    rows: dict = {p: {s: {} for s in splits} for p in protocols}
    thoughts_out = []
    for name in which:
      if name != "base" and not has_model(ctx, name):
        log.info("eval: no finished stage %s in %s; its rows are left out", name,
                 ctx.workdir)
        continue
      summary = None
      if name != "base":
        summary = fileio.read_json(fileio.join(stage_dir(ctx, name), "summary.json"))
        results.update({f"{name}/{k}": v for k, v in summary.items()
                        if isinstance(v, (int, float, str, bool))})
      fingerprint = _row_fingerprint(config, users, summary)
      model = None  # loaded for the first row not already scored
      for protocol, max_history in histories.items():
        for s in splits:
          hists, targets = _histories(ctx, s, users, max_history)
          for mode in modes:
            key = f"{name}/{mode}/{protocol}/{s}"
            row = done.get(key)
            if isinstance(row, dict) and row.get("fingerprint") == fingerprint:
              log.info("eval %s: scored by an earlier (interrupted) eval with these "
                       "settings, read from %s", key, done_path)
            else:
              if model is None:
                model = (setup.base_model() if name == "base"
                         else load_stage_model(setup, stage_dir(ctx, name)))
              t0 = time.time()
              items, thoughts = rank_histories(
                  model, setup, index, hists, think=mode == "think",
                  beam=config.eval.beam_size, batch_size=e.batch_size,
                  think_tokens=e.think_tokens)
              row = {"fingerprint": fingerprint,
                     "metrics": lm_metrics(items, targets, config.eval.ks),
                     "wall_s": time.time() - t0,
                     "thoughts": [{"model": name, "protocol": protocol, "split": s,
                                   "user": int(u), "target": int(t), "thought": th,
                                   "top": [int(x) for x in it[:5]]}
                                  for u, t, th, it in list(zip(users, targets, thoughts,
                                                               items))[:e.keep_thoughts]]}
              done[key] = row
              _write_rows(done_path, done)
            m = row["metrics"]
            label = f"{LABELS[name]}, {'thinking' if mode == 'think' else 'non-thinking'}"
            rows[protocol][s][label] = m
            results.update({f"{key}/{k}": v for k, v in m.items()})
            results[f"{key}/wall_s"] = row["wall_s"]
            log.info("eval %s %s %s %s: R@10 %.4f N@10 %.4f (%d users, %.0f s)", name,
                     mode, protocol, s, m.get("recall@10", float("nan")),
                     m.get("ndcg@10", float("nan")), len(users), row["wall_s"])
            thoughts_out += row["thoughts"]
      del model
    compare = _compare_rows(ctx, e.compare, users, splits, histories) if e.compare else {}
    base = _baseline_rows(ctx, users, splits, histories)
    tables = []
    for protocol in protocols:
      for s in splits:
        table = {**rows[protocol][s], **compare.get(protocol, {}).get(s, {}),
                 **base[protocol][s]}
        for label, m in list(compare.get(protocol, {}).get(s, {}).items()) + list(
            base[protocol][s].items()):
          results.update({f"rows/{label}/{protocol}/{s}/{k}": v for k, v in m.items()})
        title = {"spec": f"SPEC §0 (history ≤ {histories[protocol]})",
                 "sidr": f"SIDReasoner's window (history ≤ {SIDR_HISTORY})"}[protocol]
        tables.append(f"{s.capitalize()}, {title}: {ctx.dataset.name}, {len(users):,} "
                      f"users, full catalogue of {ctx.dataset.num_items:,} items, beam "
                      f"{config.eval.beam_size}:\n\n" + metrics_lib.results_table(table))
    report = "\n\n".join(tables)
    write_json(fileio.join(ctx.workdir, "results.json"), results)
    if jax.process_index() == 0:
      fileio.write_text(fileio.join(ctx.workdir, "results.md"), report + "\n")
      fileio.write_text(fileio.join(ctx.workdir, "eval_thoughts.jsonl"),
                        "".join(json.dumps(t) + "\n" for t in thoughts_out))
    ctx.results.update(results)
    log.info("\n%s\n", report)


def stage(name: str):
  if name in ("align", "activate"):
    return FineTune(name)
  if name == "rl":
    return Reason()
  if name == "eval":
    return ReasonEval()
  raise ValueError(f"unknown SIDReasoner stage {name!r}; available: {list(STAGES)}")
