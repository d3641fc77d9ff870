"""The stages of a run: ``config.stages`` (default ``tokenize,train,evaluate``), in order.

| stage      | what it does                                          | resumes from          |
|------------|-------------------------------------------------------|-----------------------|
| `tokenize` | item vectors → quantizer → ``sid/`` (the SID table)   | ``sid/fingerprint.json`` |
| `train`    | the supervised train loop → ``checkpoints/``          | ``checkpoints/last``  |
| `evaluate` | best checkpoint on val and test, beside the baselines | (re-evaluates)        |

Every stage reads and extends one ``RunContext`` (the data, the split, the SID table, the
model of the last stage that made one, the results so far). A stage is resumable: run
again in the same workdir, it reuses what it finished and continues what it did not.
``train`` starts from another run's best checkpoint with ``init.from_workdir`` (when
this workdir has no checkpoint of its own; precedence: resume > init > scratch), and
``evaluate`` without a ``train`` before it evaluates that checkpoint. Each ``evaluate``
adds one row per split to the results table (``results.md``) and its keys to
``results.json``. Later stages (SFT on other corpora, an RL stage) are classes with a
``run(ctx)`` registered in ``STAGES``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from typing import Any, Protocol

import jax
import numpy as np

from s2gr_jax import baselines as baselines_lib
from s2gr_jax import checkpoints as ckpt_lib
from s2gr_jax import decoding
from s2gr_jax import evaluate as evaluate_lib
from s2gr_jax import errors
from s2gr_jax import fileio
from s2gr_jax import metrics as metrics_lib
from s2gr_jax import models
from s2gr_jax import parallel
from s2gr_jax import train as train_lib
from s2gr_jax.data import batches
from s2gr_jax.data import datasets
from s2gr_jax.data import pipeline
from s2gr_jax.sid import categories as categories_lib
from s2gr_jax.sid import diagnostics
from s2gr_jax.sid import embeddings
from s2gr_jax.sid import graph as graph_lib
from s2gr_jax.sid import quantizers
from s2gr_jax.sid import table as table_lib

log = logging.getLogger(__name__)

TABLE_COLUMNS = metrics_lib.TABLE_COLUMNS
SPLITS = ("test", "val")


def write_json(path, obj) -> None:
  """A JSON output of the run, written by process 0 only."""
  if jax.process_index() == 0:
    fileio.write_json(path, obj, indent=2, sort_keys=True)


results_table = metrics_lib.results_table


# --- what the stages share ----------------------------------------------------------------

@dataclasses.dataclass
class Trained:
  """A model a stage produced (or loaded): what ``evaluate`` ranks with.

  Attributes:
    state: the model's parameters and variables (``nnx.split`` state).
    label: its row in the results table.
    prefix: of its keys in ``results.json`` ('' for the first model, e.g. 'rl/' later).
    info: ``results.json`` entries about how it was made (steps, wall time, ...).
  """

  state: Any
  label: str
  prefix: str = ""
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunContext:
  """The run as the stages see it; each stage fills in what later ones need."""

  config: Any
  workdir: str
  mesh: Any
  dataset: datasets.SequenceDataset
  split: pipeline.LeaveOneOut
  ckpts: ckpt_lib.Checkpoints
  writer: Any
  table: table_lib.SidTable | None = None
  trained: Trained | None = None
  stopped: bool = False  # a stage ended early on request: later stages do not run
  results: dict[str, Any] = dataclasses.field(default_factory=dict)
  rows: dict[str, dict[str, dict]] = dataclasses.field(
      default_factory=lambda: {s: {} for s in SPLITS})  # split → row label → metrics
  baseline_metrics: dict[str, dict] | None = None  # split → baseline → metrics
  lm: Any = None  # SIDReasoner's language model setup (lm/reasoner.py), once built

  @property
  def entry(self) -> models.Entry:
    if self.config.model.name == REASONER:  # an LM over ordered SIDs: prefix search
      return models.Entry(config=None, module=None, search="prefix")
    return models.get(self.config.model.name)

  def need_table(self, stage: str) -> table_lib.SidTable:
    if self.table is None:
      raise ValueError(f"stage {stage!r} needs the Semantic IDs: put 'tokenize' before "
                       f"it in config.stages (got {self.config.stages!r})")
    return self.table

  @functools.cached_property
  def pipelines(self) -> pipeline.Pipelines:
    config = self.config
    return pipeline.Pipelines(
        source=self.dataset.source, split=self.split, codes=self.need_table("train").lookup(),
        user_buckets=batches.hash_users(self.dataset.user_ids, config.data.user_buckets),
        max_history=config.data.max_history,
        length_buckets=tuple(config.data.length_buckets),
        shard_index=jax.process_index(), shard_count=jax.process_count(),
        sequences=self.dataset.sequences)

  @functools.cached_property
  def eval_batch_size(self) -> int:
    return parallel.check_batch_size(self.config.eval.batch_size, self.mesh,
                                     "eval.batch_size")

  @functools.cached_property
  def model_parts(self):
    """(graphdef of model + optimizer, graphdef of the model, initial state, filter of
    the trainable parameters), created shape-first on the mesh. The train loop donates
    the initial state: after a ``train`` stage only the graphdefs are valid here."""
    config = self.config
    make_model = models.build(config.model, self.need_table("train"),
                              user_buckets=config.data.user_buckets,
                              max_history=config.data.max_history)
    wrt = train_lib.trainable(config.train.trainable)
    graphdef, model_graphdef, state = train_lib.create_state(
        make_model, train_lib.make_optimizer(config.train), config.seed, self.mesh,
        parallel.rules_from_config(config.mesh), wrt=wrt)
    log.info("Model %s: %s parameters", config.model.name,
             f"{train_lib.param_count(state):,}")
    return graphdef, model_graphdef, state, wrt

  @functools.cached_property
  def ranker(self):
    """``evaluate(model_state, batches, by_length=False)``: the compiled constrained
    ranking of this run's model over its catalogue index."""
    config = self.config
    table = self.need_table("evaluate")
    extras = {}
    if self.entry.search == "sets":  # REG4Rec's pruning reads the tokens' categories
      extras["item_category"] = categories_lib.item_categories(
          self.dataset.item_text, self.dataset.item_attributes, self.dataset.num_items)[0]
    index = jax.device_put(decoding.make_index(table, self.entry.search, **extras),
                           parallel.replicated(self.mesh))
    eval_step = evaluate_lib.make_eval_step(self.model_parts[1], self.mesh,
                                            beam=config.eval.beam_size,
                                            ks=tuple(config.eval.ks))
    return lambda model_state, eval_batches, **kw: evaluate_lib.evaluate(
        eval_step, model_state, eval_batches, index, self.mesh, **kw)


class Stage(Protocol):
  name: str

  def run(self, ctx: RunContext) -> None:
    ...


# --- tokenize -----------------------------------------------------------------------------

class Tokenize:
  """Semantic IDs, built once per workdir and reused on resume (``tokenizer.*``).

  Writes ``sid/``: the table, ``codebook_stats.json`` (with the training curves of
  learned tokenizers), ``codebook_usage.png`` and, for RQ-VAEs, ``tokenizer_training.png``;
  tokenizer metrics also go to TensorBoard under ``tokenizer/``. Models that address
  items directly get the identity table and no tokenizer.
  """

  name = "tokenize"

  def run(self, ctx: RunContext) -> None:
    config, dataset = ctx.config, ctx.dataset
    if not ctx.entry.uses_sids:
      log.info("Model %s ranks items directly: no tokenizer stage", config.model.name)
      ctx.table = table_lib.SidTable.identity(dataset.num_items)
      return
    sid_dir = fileio.join(ctx.workdir, "sid")
    self.load_or_fit(ctx, sid_dir)
    if (jax.process_index() == 0
        and not fileio.exists(sid_dir / TOKEN_CATEGORIES_FILE)):  # reused tables too
      write_token_categories(ctx.table, dataset, sid_dir)

  def load_or_fit(self, ctx: RunContext, sid_dir) -> None:
    config, dataset = ctx.config, ctx.dataset
    if config.tokenizer.from_workdir:
      ctx.table = reuse_semantic_ids(config.tokenizer.from_workdir, dataset, sid_dir)
      return
    key = {"tokenizer": tokenizer_key(config.tokenizer), "dataset": dataset.fingerprint,
           "num_items": dataset.num_items}
    key_path = sid_dir / "fingerprint.json"
    if key_path.exists():
      cached = fileio.read_json(key_path)
      if cached == json.loads(json.dumps(key)):
        ctx.table = table_lib.SidTable.load(sid_dir, num_items=dataset.num_items)
        log.info("Semantic IDs: reusing %s (%d levels, sizes %s)", sid_dir,
                 ctx.table.num_levels, ctx.table.codebook_sizes)
        return
      if ctx.ckpts.latest_step() is not None:
        raise ValueError(f"{ctx.workdir} holds checkpoints trained on Semantic IDs built "
                         f"from another tokenizer config or dataset ({key_path}); use a "
                         "new workdir")
    ctx.table = self.fit(ctx, sid_dir, key)

  def fit(self, ctx: RunContext, sid_dir, key) -> table_lib.SidTable:
    tcfg, dataset = ctx.config.tokenizer, ctx.dataset
    t0 = time.time()
    x = embeddings.item_embeddings(tcfg, dataset)
    graph = None
    if quantizers.needs_graph(tcfg.kind):
      graph = graph_lib.cooccurrence(ctx.split.training_histories(dataset.sequences),
                                     dataset.num_items, tcfg.coba.window)
      log.info("Co-occurrence graph (training histories, window %d): %d edges",
               tcfg.coba.window, graph.nnz // 2)
    callback = lambda step, scalars: ctx.writer.write(
        step, {f"tokenizer/{k}": v for k, v in scalars.items()})
    quantized = quantizers.make_quantizer(tcfg, mesh=ctx.mesh,
                                          callback=callback).fit(x, graph)
    table = table_lib.SidTable.from_semantic_codes(
        quantized.codes, quantized.codebook_sizes, quantized.ordered, quantized.codebooks)
    stats = diagnostics.codebook_stats(table)
    stats.update(embedding=tcfg.embedding, embedding_shape=list(x.shape),
                 tokenizer=tcfg.kind, history=quantized.history, wall_s=time.time() - t0,
                 reconstruction_mse=quantized.history.get("final_recon_mse"))
    if jax.process_index() == 0:
      table.save(sid_dir)
      diagnostics.save_stats(stats, sid_dir)
      diagnostics.plot_usage(stats, sid_dir / "codebook_usage.png")
      if quantized.history.get("step"):
        diagnostics.plot_training(quantized.history, sid_dir / "tokenizer_training.png")
      write_json(sid_dir / "fingerprint.json", key)
      write_token_categories(table, dataset, sid_dir)  # a new table: new categories
    log.info("Semantic IDs (%s on %s %s): utilisation %s, perplexity %s, collision rate "
             "%.3f, unique SIDs %.3f, de-dup level size %s, %.1f s", tcfg.kind,
             tcfg.embedding, x.shape, [round(u, 4) for u in stats["utilization"]],
             [round(p, 1) for p in stats["perplexity"]], stats["collision_rate"],
             stats["unique_sid_share"],
             table.codebook_sizes[table.semantic_levels:] or "none", stats["wall_s"])
    return table


def tokenizer_key(tcfg) -> dict:
  """The tokenizer settings that identify a SID table. The MPQ section (added after
  tables were first saved) counts only for MPQ, so older tables still match."""
  key = tcfg.to_dict()
  if key.get("kind") != "mpq":
    key.pop("mpq", None)
  return key


TOKEN_CATEGORIES_FILE = "token_categories.json"


def write_token_categories(table, dataset, sid_dir) -> None:
  """``sid/token_categories.json``: each token's majority category (``sid/categories``)
  and how pure the tokens are (the share of items whose category is their token's)."""
  item_cat, names = categories_lib.item_categories(
      dataset.item_text, dataset.item_attributes, dataset.num_items)
  per_level = categories_lib.token_categories(
      table.codes[:, :table.semantic_levels], table.codebook_sizes[:table.semantic_levels],
      item_cat)
  known = item_cat >= 0
  purity = [float((cats[table.codes[known, l]] == item_cat[known]).mean()) if known.any()
            else None for l, cats in enumerate(per_level)]
  write_json(sid_dir / TOKEN_CATEGORIES_FILE, {
      "names": names, "items_without_category": int((~known).sum()), "purity": purity,
      "levels": [c.tolist() for c in per_level]})


def reuse_semantic_ids(source_workdir: str, dataset, sid_dir) -> table_lib.SidTable:
  """Loads the SIDs another run built (``tokenizer.from_workdir``) for the same data."""
  source = fileio.join(source_workdir, "sid")
  key_path = source / "fingerprint.json"
  if not key_path.exists():
    raise errors.MissingFileError(f"tokenizer.from_workdir: no Semantic IDs in {source} "
                                  "(expected fingerprint.json and sid_table.npz)")
  key = fileio.read_json(key_path)
  if (not isinstance(key, dict) or not isinstance(key.get("tokenizer"), dict)
      or "dataset" not in key or "num_items" not in key):
    raise errors.DataError(f"{key_path}: expected the keys 'tokenizer', 'dataset' and "
                           "'num_items' of a tokenize stage")
  if key["dataset"] != dataset.fingerprint or key["num_items"] != dataset.num_items:
    raise errors.DataError(f"tokenizer.from_workdir: {source} was built for dataset "
                           f"{key['dataset']} ({key['num_items']} items), this run uses "
                           f"{dataset.fingerprint} ({dataset.num_items} items)")
  table = table_lib.SidTable.load(source, num_items=dataset.num_items)
  if (jax.process_index() == 0
      and fileio.absolute(source) != fileio.absolute(sid_dir)):
    table.save(sid_dir)
    write_json(sid_dir / "fingerprint.json", dict(key, copied_from=str(source)))
    fileio.copy(source / diagnostics.STATS_FILE, sid_dir / diagnostics.STATS_FILE)
  log.info("Semantic IDs: reusing %s (%s, %d levels, sizes %s)", source,
           key["tokenizer"]["kind"], table.num_levels, table.codebook_sizes)
  return table


# --- init.from_workdir --------------------------------------------------------------------

def load_initial_model(ctx: RunContext, model_state_like):
  """The best model state of ``init.from_workdir``, checked to be this model on these SIDs."""
  source = ctx.config.init.from_workdir
  if ctx.entry.uses_sids:
    theirs = fileio.join(source, "sid", table_lib.TABLE_FILE)
    if not fileio.exists(theirs):
      raise errors.MissingFileError(f"init.from_workdir={source!r}: no {theirs} (is it a "
                                    "run directory of a model over Semantic IDs?)")
    other = table_lib.SidTable.load(fileio.join(source, "sid"))
    if not np.array_equal(other.codes, ctx.table.codes):
      raise errors.DataError(f"init.from_workdir={source!r} was trained on other Semantic IDs "
                       "than this run's; set tokenizer.from_workdir to the same run so "
                       "both use one table")
  source_ckpts = ckpt_lib.Checkpoints(source, 1)
  try:
    if not source_ckpts.has_best():
      raise errors.MissingFileError(
          f"init.from_workdir={source!r} has no best checkpoint (checkpoints/best): train "
          "it until one validation first")
    try:
      state, meta = source_ckpts.restore_best(model_state_like)
    except Exception as e:  # pylint: disable=broad-except  (Orbax's shape errors vary)
      raise errors.DataError(f"init.from_workdir={source!r}: its best checkpoint does not fit "
                       f"this model (config.model.{ctx.config.model.name} must match the "
                       f"run that saved it): {type(e).__name__}: "
                       f"{str(e).splitlines()[0][:300]}") from e
  finally:
    source_ckpts.close()
  log.info("Initialised from %s (its best checkpoint, step %s)", source, meta.get("step"))
  return state, meta


# --- train --------------------------------------------------------------------------------

class Train:
  """Supervised training (``train.*``): the train loop over the Grain pipeline, with
  periodic validation, early stopping and checkpoints; resumable."""

  name = "train"

  def run(self, ctx: RunContext) -> None:
    config, mesh, pipes = ctx.config, ctx.mesh, ctx.pipelines
    train_bs = parallel.check_batch_size(config.train.batch_size, mesh, "train.batch_size")
    train_ds = pipes.train_dataset(
        train_bs, seed=config.seed, num_threads=config.data.num_threads,
        examples="except_last" if config.train.get("hold_out_last") else "all")
    log.info("Training examples: %d (%d steps per epoch at batch %d); %d train steps = "
             "%.1f epochs", pipes.num_train_examples(), pipes.steps_per_epoch(train_bs),
             config.train.batch_size, config.train.num_steps,
             config.train.num_steps / max(pipes.steps_per_epoch(train_bs), 1))
    if config.train.get("hold_out_last"):
      log.info("  train.hold_out_last: each user's last training target (%d examples) "
               "is left out of these (rl.examples='last' trains on them)",
               int((pipes.split.lengths >= 4).sum()))
    val_users = None
    if 0 < config.eval.val_users < ctx.dataset.num_users:
      val_users = np.random.default_rng(config.seed).choice(
          ctx.dataset.num_users, config.eval.val_users, replace=False)
    val_batches = pipes.eval_batches("val", ctx.eval_batch_size, val_users)

    graphdef, _, state, wrt = ctx.model_parts
    if config.init.from_workdir and ctx.ckpts.latest_step() is None:
      state[0], _ = load_initial_model(ctx, state[0])  # the optimizer starts afresh
    train_step = train_lib.make_train_step(graphdef, train_lib.make_schedule(config.train),
                                           wrt)
    loop = train_lib.train_loop(
        config, train_step=train_step, state=state, mesh=mesh, train_ds=train_ds,
        validate=lambda ms: ctx.ranker(ms, val_batches), ckpts=ctx.ckpts,
        writer=ctx.writer, examples_per_step=config.train.batch_size)
    if not loop.finished:
      log.info("Run stopped at step %d before train.num_steps=%d; rerun the same command "
               "to continue.", loop.step, config.train.num_steps)
      ctx.stopped = True
      return
    model_state = loop.state[0]
    if ctx.ckpts.has_best():
      model_state, _ = ctx.ckpts.restore_best(model_state)
    ctx.trained = Trained(
        state=model_state, label=config.model.name,
        info={"train/steps": loop.step, "train/best_step": loop.best_step,
              "train/epochs": loop.step * config.train.batch_size
                              / max(pipes.num_train_examples(), 1),
              "train/best_epoch": loop.best_step * config.train.batch_size
                                  / max(pipes.num_train_examples(), 1),
              "train/wall_s": loop.wall_s, "train/compile_s": loop.compile_s,
              "train/eval_s": loop.eval_s,
              "train/step_s": loop.wall_s - loop.compile_s - loop.eval_s,
              "train/stopped_early": loop.stopped_early})


# --- evaluate -----------------------------------------------------------------------------

class Evaluate:
  """The last trained model's best checkpoint on the full validation and test sets,
  beside the non-learned baselines; writes ``results.json`` and ``results.md``."""

  name = "evaluate"

  def run(self, ctx: RunContext) -> None:
    config, dataset = ctx.config, ctx.dataset
    if ctx.trained is None:
      if not config.init.from_workdir:
        raise ValueError("stage 'evaluate' has no model: put 'train' before it in "
                         "config.stages, or set init.from_workdir to a trained run")
      state, meta = load_initial_model(ctx, ctx.model_parts[2][0])
      ctx.trained = Trained(state=state, label=config.model.name,
                            info={"train/steps": 0, "train/best_step": meta.get("step", -1),
                                  "train/wall_s": 0.0, "train/stopped_early": False})
      ctx.results["init/from_workdir"] = config.init.from_workdir
    trained = ctx.trained
    splits = (("val",) if config.eval.get("final_val", True) else ()) + (
        ("test",) if config.eval.test else ())  # no test during searches
    t0, c0 = time.time(), train_lib.compile_seconds()
    eval_batches = {s: ctx.pipelines.eval_batches(s, ctx.eval_batch_size) for s in splits}
    model_metrics, by_length = {}, {}
    for s in splits:
      model_metrics[s], by_length[s] = ctx.ranker(trained.state, eval_batches[s],
                                                  by_length=True)
    eval_s = time.time() - t0
    eval_compile_s = train_lib.compile_seconds() - c0
    base_metrics = self.baselines(ctx, eval_batches)

    results, p = ctx.results, trained.prefix
    for s in splits:
      results.update({f"{p}{s}/{k}": v for k, v in model_metrics[s].items()})
      # By history-length bucket (items), e.g. test_by_history/5/ndcg@10: histories of
      # 4-5 items when the buckets are (3, 5, ...).
      for length, m in by_length[s].items():
        results.update({f"{p}{s}_by_history/{length}/{k}": v for k, v in m.items()})
      for name, m in base_metrics[s].items():
        results.update({f"baselines/{name}/{s}/{k}": v for k, v in m.items()})
    results.update({f"{p}{k}": v for k, v in trained.info.items()})
    results.update({
        f"{p}eval/wall_s": eval_s, f"{p}eval/compile_s": eval_compile_s,
        "eval/beam_size": config.eval.beam_size, "eval/test": bool(config.eval.test),
        "eval/final_val": "val" in splits,
        "data/name": dataset.name, "data/num_users": dataset.num_users,
        "data/num_items": dataset.num_items})
    write_json(fileio.join(ctx.workdir, "results.json"), results)
    step = int(trained.info.get("train/steps", 0))
    ctx.writer.write(step, {f"final/{k}": v for k, v in results.items()
                            if k.startswith((f"{p}val/", f"{p}test/"))})

    for s in splits:
      ctx.rows[s][trained.label] = model_metrics[s]
    tables = []
    for s, title in (("test", "Test"), ("val", "Validation")):
      if s not in splits:
        continue
      rows = {**ctx.rows[s], **base_metrics[s]}
      tables.append(f"{title} ({dataset.name}, {dataset.num_users:,} users, full "
                    f"catalogue of {dataset.num_items:,} items, beam "
                    f"{config.eval.beam_size}; best step "
                    f"{trained.info.get('train/best_step')}):\n\n" + results_table(rows))
    report = "\n\n".join(tables)
    if jax.process_index() == 0:
      fileio.write_text(fileio.join(ctx.workdir, "results.md"), report + "\n")
    log.info("\n%s\n", report)

  @staticmethod
  def baselines(ctx: RunContext, eval_batches) -> dict[str, dict]:
    """The non-learned rows (``baselines.NAMES``) on the same batches (once a run)."""
    if ctx.baseline_metrics is None:
      base = baselines_lib.Baselines(ctx.split.training_histories(ctx.dataset.sequences),
                                     ctx.dataset.num_items)
      ks = tuple(ctx.config.eval.ks)
      ctx.baseline_metrics = {s: base.evaluate(b, ks) for s, b in eval_batches.items()}
    return ctx.baseline_metrics


# --- the list -----------------------------------------------------------------------------

# --- rl -----------------------------------------------------------------------------------

def rl_loop_config(config):
  """A copy of ``config`` whose ``train.*`` loop keys are ``rl.*``'s: what
  ``train.train_loop`` reads when it runs the GRPO step."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  out = ml_collections.ConfigDict(config.to_dict())
  rl = config.rl
  out.train.update(batch_size=rl.batch_size, num_steps=rl.num_steps,
                   log_every=rl.log_every, eval_every=rl.eval_every,
                   checkpoint_every=rl.checkpoint_every, patience=rl.patience,
                   stop_at_step=rl.stop_at_step)
  out.train.validate_at_start = bool(rl.get("validate_at_start", False))
  return out


class Reinforce:
  """GRPO (``rl.*``, ``s2gr_jax/rl/``) from the supervised model: this run's best
  checkpoint, or ``init.from_workdir``'s (``rl.init_from``). Its own checkpoints,
  metrics and TensorBoard go to ``WORKDIR/rl/`` (the SFT checkpoint is never touched);
  resumable like ``train``; the next ``evaluate`` adds its row, keys ``rl/...``."""

  name = "rl"

  def run(self, ctx: RunContext) -> None:
    from s2gr_jax import metric_writer  # pylint: disable=g-import-not-at-top
    from s2gr_jax.rl import grpo  # pylint: disable=g-import-not-at-top
    from s2gr_jax.rl import rewards as rewards_lib  # pylint: disable=g-import-not-at-top
    config, mesh, rl = ctx.config, ctx.mesh, ctx.config.rl
    search = ctx.entry.search
    if search not in ("prefix", "sets"):
      raise ValueError(f"stage 'rl': model {config.model.name!r} scores items directly; "
                       "GRPO samples the paths of a generator over Semantic IDs")
    table = ctx.need_table("rl")
    if ctx.trained is None:
      if not config.init.from_workdir:
        raise ValueError("stage 'rl' has no supervised model: put 'train' before it, or "
                         "set rl.init_from (or init.from_workdir) to a trained run")
      sft_state, _ = load_initial_model(ctx, ctx.model_parts[2][0])
      sft_label = config.model.name
    else:
      sft_state, sft_label = ctx.trained.state, ctx.trained.label
    settings = grpo.GrpoSettings.from_config(rl, search)
    loop_config = rl_loop_config(config)
    wrt = train_lib.trainable(config.train.trainable)
    make_model = models.build(config.model, table, user_buckets=config.data.user_buckets,
                              max_history=config.data.max_history)
    graphdef, model_graphdef, state = train_lib.create_state(
        make_model, grpo.make_optimizer(rl), config.seed, mesh,
        parallel.rules_from_config(config.mesh), wrt=wrt)
    copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)
    ref_state = copy(sft_state)  # frozen: the KL anchor
    rl_dir = fileio.join(ctx.workdir, "rl")
    rl_ckpts = ckpt_lib.Checkpoints(rl_dir, config.checkpoint.max_to_keep)
    writer = metric_writer.MetricWriter(rl_dir)
    try:
      if rl_ckpts.latest_step() is None:
        state[0] = copy(sft_state)
      bs = parallel.check_batch_size(rl.batch_size, mesh, "rl.batch_size")
      train_ds = ctx.pipelines.train_dataset(bs, seed=config.seed + 7919,
                                             num_threads=config.data.num_threads,
                                             future=rl.msra_items - 1,
                                             examples=rl.get("examples", "all"))
      val_users = None
      if 0 < config.eval.val_users < ctx.dataset.num_users:
        val_users = np.random.default_rng(config.seed).choice(
            ctx.dataset.num_users, config.eval.val_users, replace=False)
      val_batches = ctx.pipelines.eval_batches("val", ctx.eval_batch_size, val_users)
      extras = {}
      item_category = categories_lib.item_categories(
          ctx.dataset.item_text, ctx.dataset.item_attributes, ctx.dataset.num_items)[0]
      if search == "sets":
        extras["item_category"] = item_category
      replicated = parallel.replicated(mesh)
      if search == "sets":  # the sampler tracks alive items by posting lists
        extras["compact"] = False
      index = jax.device_put(decoding.make_index(table, search, **extras), replicated)
      tables = jax.device_put(rewards_lib.RewardTables.from_table(table, item_category),
                              replicated)
      log.info("GRPO: %d %s paths per user, rewards %s, MSRA over %d items, KL %g, "
               "%d updates per sample, lr %g, %d steps of %d users",
               settings.group, "beam" if settings.rollout == "beam" else "sampled",
               dict(settings.weights), rl.msra_items, settings.kl_coef,
               settings.updates_per_sample, rl.lr, rl.num_steps, rl.batch_size)
      rl_step = grpo.make_rl_step(graphdef, model_graphdef, settings, wrt)
      loop = train_lib.train_loop(
          loop_config, train_step=rl_step, state=state, mesh=mesh, train_ds=train_ds,
          validate=lambda ms: ctx.ranker(ms, val_batches), ckpts=rl_ckpts, writer=writer,
          examples_per_step=rl.batch_size, step_args=(ref_state, index, tables))
      if not loop.finished:
        log.info("GRPO stopped at step %d before rl.num_steps=%d; rerun the same command "
                 "to continue.", loop.step, rl.num_steps)
        ctx.stopped = True
        return
      model_state = loop.state[0]
      if rl_ckpts.has_best():
        model_state, _ = rl_ckpts.restore_best(model_state)
    finally:
      writer.close()
      rl_ckpts.close()
    ctx.trained = Trained(
        state=model_state, label=f"{sft_label} + GRPO", prefix="rl/",
        info={"train/steps": loop.step, "train/best_step": loop.best_step,
              "train/wall_s": loop.wall_s, "train/compile_s": loop.compile_s,
              "train/eval_s": loop.eval_s,
              "train/step_s": loop.wall_s - loop.compile_s - loop.eval_s,
              "train/stopped_early": loop.stopped_early,
              "train/paths_per_user": settings.group,
              "train/rollout": settings.rollout,
              "train/rewards": ",".join(f"{k}={v:g}" for k, v in settings.weights),
              "train/msra_items": rl.msra_items})


STAGES: dict[str, type] = {"tokenize": Tokenize, "train": Train, "evaluate": Evaluate,
                           "rl": Reinforce}


# SIDReasoner (``model.name = 'sidreasoner'``, ``lm/reasoner.py``): its stages after
# ``tokenize`` are the language model's.
REASONER = "sidreasoner"


def parse(spec: str, available=None) -> list[str]:
  """``config.stages`` ("tokenize,train,evaluate") → stage names, checked."""
  available = STAGES if available is None else available
  names = [s.strip() for s in str(spec).split(",") if s.strip()]
  if not names:
    raise ValueError("config.stages is empty; e.g. 'tokenize,train,evaluate'")
  unknown = [n for n in names if n not in available]
  if unknown:
    raise ValueError(f"config.stages={spec!r}: unknown stage {unknown[0]!r}; available: "
                     f"{list(available)}")
  if names[0] != "tokenize":
    raise ValueError(f"config.stages={spec!r} must start with 'tokenize' (the Semantic "
                     "IDs every later stage reads; it reuses them when they exist)")
  return names


def plan(config) -> list[str]:
  """The stages a run takes: ``config.stages``, and with ``rl.enabled`` the GRPO stage
  and its evaluation after them (without 'train' when ``rl.init_from`` names the
  supervised run; ``stages='tokenize'`` alone stays a tokenize-only run). SIDReasoner: ``config.stage`` ('align', 'activate', 'rl', 'eval')
  runs that one stage after ``tokenize``; '' runs ``config.stages``."""
  if config.model.name == REASONER:
    from s2gr_jax.lm import reasoner  # pylint: disable=g-import-not-at-top
    one = str(config.get("stage", "") or "")
    if one:
      if one not in reasoner.STAGES:
        raise ValueError(f"config.stage={one!r}: expected one of {list(reasoner.STAGES)} "
                         "(or '' for all of config.stages)")
      return ["tokenize", one]
    return parse(config.stages, ("tokenize",) + reasoner.STAGES)
  if config.get("stage"):
    raise ValueError(f"config.stage={config.stage!r} selects a SIDReasoner stage; "
                     f"model.name={config.model.name!r} runs config.stages")
  names = parse(config.stages)
  rl = config.get("rl")
  if rl is not None and rl.enabled and names != ["tokenize"]:
    if rl.init_from:
      names = [n for n in names if n != "train"]
    if "rl" not in names:
      names += ["rl", "evaluate"]
  return names


def from_config(config) -> list[Stage]:
  if config.model.name == REASONER:
    from s2gr_jax.lm import reasoner  # pylint: disable=g-import-not-at-top
    return [Tokenize() if n == "tokenize" else reasoner.stage(n) for n in plan(config)]
  return [STAGES[name]() for name in plan(config)]
