"""The recipe: data → semantic IDs → train → evaluate → ``results.json``.

Output contract in the workdir (a local path or a ``gs://bucket/dir`` URL: ``fileio``):

  config.json        the resolved config
  environment.json   package versions, devices, git commit
  sid/               sid_table.npz, codebook_stats.json, fingerprint.json
  checkpoints/       last/ (resume) and best/ (selected on validation)
  metrics.jsonl      one JSON object per logged step (train/*, val/*, perf/*)
  tensorboard/       the same as TensorBoard event files
  results.json       flat keys: val/ndcg@10, test/recall@10, baselines/..., train/...
  results.md         the results table

Rerunning the same command in the same workdir resumes where it stopped; a finished run
is re-evaluated from its best checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time

import jax
import numpy as np

from s2gr_jax import baselines as baselines_lib
from s2gr_jax import checkpoints as ckpt_lib
from s2gr_jax import config_lib
from s2gr_jax import decoding
from s2gr_jax import fileio
from s2gr_jax import metric_writer
from s2gr_jax import models
from s2gr_jax import parallel
from s2gr_jax import train as train_lib
from s2gr_jax.data import datasets
from s2gr_jax.data import pipeline
from s2gr_jax.sid import diagnostics
from s2gr_jax.sid import embeddings
from s2gr_jax.sid import graph as graph_lib
from s2gr_jax.sid import quantizers
from s2gr_jax.sid import table as table_lib

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("recall@1", "ndcg@1", "recall@5", "ndcg@5", "recall@10", "ndcg@10",
                 "recall@20", "ndcg@20")


# --- outputs ----------------------------------------------------------------------------

def _write_json(path, obj) -> None:
  if jax.process_index() == 0:
    fileio.write_json(path, obj, indent=2, sort_keys=True)


def _environment() -> dict:
  import flax, optax, orbax.checkpoint, grain  # pylint: disable=g-import-not-at-top,multiple-imports
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(__file__), check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = None
  return {"python": platform.python_version(), "jax": jax.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax": orbax.checkpoint.__version__, "grain": grain.__version__,
          "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "process_count": jax.process_count(), "git_commit": commit,
          "machine": platform.machine(), "cpu_count": os.cpu_count()}


def results_table(rows: dict[str, dict[str, float]]) -> str:
  head = "| model | " + " | ".join(
      c.replace("recall", "R").replace("ndcg", "N") for c in TABLE_COLUMNS) + " |"
  lines = [head, "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
  for name, m in rows.items():
    lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in TABLE_COLUMNS) + " |")
  return "\n".join(lines)


# --- semantic IDs -----------------------------------------------------------------------

def semantic_ids(config, dataset: datasets.SequenceDataset, split, workdir: str, *,
                 mesh, writer, has_checkpoint: bool) -> table_lib.SidTable:
  """The SID table, built once per workdir and reused on resume.

  Writes ``sid/``: the table, ``codebook_stats.json`` (with the training curves of
  learned tokenizers), ``codebook_usage.png`` and, for RQ-VAEs, ``tokenizer_training.png``;
  tokenizer metrics also go to TensorBoard under ``tokenizer/``.
  """
  if config.model.name in models.ITEM_SCORERS:
    log.info("Model %s ranks items directly: no tokenizer stage", config.model.name)
    return table_lib.SidTable.identity(dataset.num_items)
  sid_dir = fileio.join(workdir, "sid")
  if config.tokenizer.from_workdir:
    return _reuse_semantic_ids(config.tokenizer.from_workdir, dataset, sid_dir)
  key = {"tokenizer": config.tokenizer.to_dict(), "dataset": dataset.fingerprint,
         "num_items": dataset.num_items}
  key_path = sid_dir / "fingerprint.json"
  if key_path.exists():
    cached = fileio.read_json(key_path)
    if cached == json.loads(json.dumps(key)):
      table = table_lib.SidTable.load(sid_dir)
      log.info("Semantic IDs: reusing %s (%d levels, sizes %s)", sid_dir,
               table.num_levels, table.codebook_sizes)
      return table
    if has_checkpoint:
      raise ValueError(f"{workdir} holds checkpoints trained on Semantic IDs built "
                       f"from another tokenizer config or dataset ({key_path}); use a new "
                       "workdir")
  tcfg = config.tokenizer
  t0 = time.time()
  x = embeddings.item_embeddings(tcfg, dataset)
  graph = None
  if tcfg.kind == "coba":
    graph = graph_lib.cooccurrence(split.training_histories(dataset.sequences),
                                   dataset.num_items, tcfg.coba.window)
    log.info("Co-occurrence graph (training histories, window %d): %d edges",
             tcfg.coba.window, graph.nnz // 2)
  callback = lambda step, scalars: writer.write(
      step, {f"tokenizer/{k}": v for k, v in scalars.items()})
  quantized = quantizers.make_quantizer(tcfg, mesh=mesh, callback=callback).fit(x, graph)
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
    _write_json(key_path, key)
  log.info("Semantic IDs (%s on %s %s): utilisation %s, perplexity %s, collision rate "
           "%.3f, unique SIDs %.3f, de-dup level size %s, %.1f s", tcfg.kind,
           tcfg.embedding, x.shape, [round(u, 4) for u in stats["utilization"]],
           [round(p, 1) for p in stats["perplexity"]], stats["collision_rate"],
           stats["unique_sid_share"],
           table.codebook_sizes[table.semantic_levels:] or "none", stats["wall_s"])
  return table


def _reuse_semantic_ids(source_workdir: str, dataset, sid_dir) -> table_lib.SidTable:
  """Loads the SIDs another run built (``tokenizer.from_workdir``) for the same data."""
  source = fileio.join(source_workdir, "sid")
  key_path = source / "fingerprint.json"
  if not key_path.exists():
    raise FileNotFoundError(f"tokenizer.from_workdir: no Semantic IDs in {source} "
                            "(expected fingerprint.json and sid_table.npz)")
  key = fileio.read_json(key_path)
  if key["dataset"] != dataset.fingerprint or key["num_items"] != dataset.num_items:
    raise ValueError(f"tokenizer.from_workdir: {source} was built for dataset "
                     f"{key['dataset']}, this run uses {dataset.fingerprint}")
  table = table_lib.SidTable.load(source)
  if (jax.process_index() == 0
      and fileio.absolute(source) != fileio.absolute(sid_dir)):
    table.save(sid_dir)
    _write_json(sid_dir / "fingerprint.json", dict(key, copied_from=str(source)))
    fileio.copy(source / diagnostics.STATS_FILE, sid_dir / diagnostics.STATS_FILE)
  log.info("Semantic IDs: reusing %s (%s, %d levels, sizes %s)", source,
           key["tokenizer"]["kind"], table.num_levels, table.codebook_sizes)
  return table


# --- the run ----------------------------------------------------------------------------

def run(config, workdir: str) -> dict:
  """Trains and evaluates ``config`` in ``workdir``; returns the results dict."""
  config_lib.validate(config)
  fileio.check_run_dir("workdir", workdir)
  fileio.makedirs(workdir)
  try:
    _write_json(fileio.join(workdir, "config.json"), config.to_dict())
  except Exception as e:  # pylint: disable=broad-except  (any backend's error)
    raise OSError(f"workdir={workdir!r}: cannot write config.json there ({type(e).__name__}: "
                  f"{e}). Check that the directory (or the gs:// bucket) exists and is "
                  "writable with this machine's credentials.") from e
  _write_json(fileio.join(workdir, "environment.json"), _environment())
  mesh = parallel.make_mesh(config.mesh)
  log.info("Devices: %d × %s; mesh %s", jax.device_count(), jax.default_backend(),
           dict(mesh.shape))

  # Data, split and Semantic IDs.
  dataset = datasets.load_dataset(config.data)
  split = pipeline.LeaveOneOut.from_sequences(dataset.sequences)
  ckpts = ckpt_lib.Checkpoints(workdir, config.checkpoint.max_to_keep)
  writer = metric_writer.MetricWriter(workdir, config.wandb, config.to_dict())
  try:
    table = semantic_ids(config, dataset, split, workdir, mesh=mesh, writer=writer,
                         has_checkpoint=ckpts.latest_step() is not None)
    if config.tokenize_only:
      log.info("tokenize_only: Semantic IDs are in %s", fileio.join(workdir, "sid"))
      return {}
    return _train_and_evaluate(config, workdir, mesh, dataset, split, table, ckpts,
                               writer)
  finally:
    writer.close()
    ckpts.close()


def _train_and_evaluate(config, workdir, mesh, dataset, split, table, ckpts,
                        writer) -> dict:
  """Pipelines → model → training loop → final evaluation."""
  # Pipelines.
  pipes = pipeline.Pipelines(
      source=dataset.source, split=split, codes=table.lookup(),
      user_buckets=pipeline.hash_users(dataset.user_ids, config.data.user_buckets),
      max_history=config.data.max_history,
      length_buckets=tuple(config.data.length_buckets),
      shard_index=jax.process_index(), shard_count=jax.process_count())
  train_bs = parallel.check_batch_size(config.train.batch_size, mesh, "train.batch_size")
  eval_bs = parallel.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
  train_ds = pipes.train_dataset(train_bs, seed=config.seed,
                                 num_threads=config.data.num_threads)
  log.info("Training examples: %d (%d steps per epoch at batch %d); %d train steps = "
           "%.1f epochs", pipes.num_train_examples(), pipes.steps_per_epoch(train_bs),
           config.train.batch_size, config.train.num_steps,
           config.train.num_steps / max(pipes.steps_per_epoch(train_bs), 1))
  val_users = None
  if 0 < config.eval.val_users < dataset.num_users:
    val_users = np.random.default_rng(config.seed).choice(
        dataset.num_users, config.eval.val_users, replace=False)
  val_batches = pipes.eval_batches("val", eval_bs, val_users)

  # Model, optimizer, decoding.
  make_model = models.model_factory(config.model, table,
                                    user_buckets=config.data.user_buckets,
                                    max_history=config.data.max_history)
  graphdef, model_graphdef, state = train_lib.create_state(
      make_model, train_lib.make_optimizer(config.train), config.seed, mesh,
      parallel.rules_from_config(config.mesh))
  log.info("Model %s: %s parameters", config.model.name,
           f"{train_lib.param_count(state):,}")
  prefix_index = table.prefix_index()
  trie = jax.device_put(decoding.index_arrays(prefix_index), parallel.replicated(mesh))
  eval_step = train_lib.make_eval_step(
      model_graphdef, mesh, beam=config.eval.beam_size, max_children=prefix_index.max_children,
      ks=tuple(config.eval.ks))
  evaluate = lambda model_state, batches, **kw: train_lib.evaluate(
      eval_step, model_state, batches, trie, mesh, **kw)

  # Train (or resume).
  loop = train_lib.train_loop(
      config, graphdef=graphdef, state=state, mesh=mesh, train_ds=train_ds,
      validate=lambda ms: evaluate(ms, val_batches), ckpts=ckpts, writer=writer,
      examples_per_step=config.train.batch_size)
  if not loop.finished:
    log.info("Run stopped at step %d before train.num_steps=%d; rerun the same command "
             "to continue.", loop.step, config.train.num_steps)
    return {}
  return final_evaluation(config, workdir, loop, ckpts, pipes, split, dataset, evaluate,
                          eval_bs, writer)


def final_evaluation(config, workdir, loop, ckpts, pipes, split, dataset, evaluate,
                     eval_bs, writer) -> dict:
  """Best checkpoint on the full validation and test sets, next to the baselines."""
  model_state = loop.state[0]
  if ckpts.has_best():
    model_state, _ = ckpts.restore_best(model_state)
  t0 = time.time()
  batches = {s: pipes.eval_batches(s, eval_bs) for s in ("val", "test")}
  model_metrics, by_length = {}, {}
  for s, b in batches.items():
    model_metrics[s], by_length[s] = evaluate(model_state, b, by_length=True)
  eval_s = time.time() - t0
  base = baselines_lib.Baselines(split.training_histories(dataset.sequences),
                                 dataset.num_items)
  base_metrics = {s: base.evaluate(b, tuple(config.eval.ks)) for s, b in batches.items()}

  results = {}
  for s in ("val", "test"):
    results.update({f"{s}/{k}": v for k, v in model_metrics[s].items()})
    # By history-length bucket (items), e.g. test_by_history/5/ndcg@10: histories of
    # 4-5 items when the buckets are (3, 5, ...).
    for length, m in by_length[s].items():
      results.update({f"{s}_by_history/{length}/{k}": v for k, v in m.items()})
    for name, m in base_metrics[s].items():
      results.update({f"baselines/{name}/{s}/{k}": v for k, v in m.items()})
  results.update({
      "train/steps": loop.step, "train/best_step": loop.best_step,
      "train/wall_s": loop.wall_s, "train/stopped_early": loop.stopped_early,
      "eval/wall_s": eval_s, "eval/beam_size": config.eval.beam_size,
      "data/name": dataset.name, "data/num_users": dataset.num_users,
      "data/num_items": dataset.num_items})
  _write_json(fileio.join(workdir, "results.json"), results)
  writer.write(loop.step, {f"final/{k}": v for k, v in results.items()
                           if k.startswith(("val/", "test/"))})

  tables = []
  for s, title in (("test", "Test"), ("val", "Validation")):
    rows = {config.model.name: model_metrics[s], **base_metrics[s]}
    tables.append(f"{title} ({dataset.name}, {dataset.num_users:,} users, full "
                  f"catalogue of {dataset.num_items:,} items, beam "
                  f"{config.eval.beam_size}; best step {loop.best_step}):\n\n"
                  + results_table(rows))
  report = "\n\n".join(tables)
  if jax.process_index() == 0:
    fileio.write_text(fileio.join(workdir, "results.md"), report + "\n")
  log.info("\n%s\n", report)
  return results
