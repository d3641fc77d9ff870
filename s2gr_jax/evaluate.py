"""Evaluation of a model: catalogue-constrained ranking and Recall/NDCG sums, over a mesh.

``make_eval_step`` compiles one batch's ranking (``decoding.recommend``) and metric sums;
``evaluate`` runs it over evaluation batches with one batch in flight, and can split the
metrics by history-length bucket. Nothing here knows which model or search it runs: the
index (``decoding.make_index``) decides.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import PartitionSpec as P

from s2gr_jax import decoding
from s2gr_jax import metrics as metrics_lib
from s2gr_jax import parallel
from s2gr_jax.data import batches as batches_lib


def make_eval_step(model_graphdef, mesh, *, beam: int, ks):
  """Ranking + metric sums for one batch: (model_state, batch, index) → sums.

  Decoding is independent per user, so each device searches its own slice of the batch
  (``shard_map`` over the batch axes; parameters are gathered whole into it) and only
  the metric sums are added across devices.
  """

  def local_step(model_state, batch, index):
    model = nnx.merge(model_graphdef, model_state)
    items, _, stats = decoding.recommend(model, batch, index, beam=beam,
                                         return_stats=True)
    sums = metrics_lib.rank_metric_sums(items, batch["target_item"], batch["weight"], ks)
    for name, per_user in stats.items():  # e.g. REG4Rec's CORP: paths pruned per user
      sums[f"search/{name}"] = (per_user * batch["weight"]).sum()
    return jax.tree.map(lambda x: jax.lax.psum(x, parallel.BATCH_AXES), sums)

  batch = P(parallel.BATCH_AXES)
  return jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=(P(), batch, P()),
                               out_specs=P()))


def evaluate(eval_step, model_state, batches, index, mesh, *, by_length: bool = False):
  """Metrics over evaluation batches (and per history-length bucket if ``by_length``).

  One batch is in flight while the previous one's sums come back: the device never
  waits for the host, and the queue of dispatched work stays short.

  Returns:
    metrics, or (metrics, {bucket length: metrics}) with ``by_length``.
  """
  sums: dict[int, dict] = {}

  def collect(length, out):
    sums[length] = metrics_lib.add(sums.get(length), jax.device_get(out))

  pending = None
  for batch in batches:
    out = eval_step(model_state, parallel.shard_batch(batch, mesh), index)
    if pending is not None:
      collect(*pending)
    pending = (batches_lib.history_length(batch), out)
  collect(*pending)
  total = None
  for part in sums.values():
    total = metrics_lib.add(total, part)
  overall = metrics_lib.finalize(total)
  if not by_length:
    return overall
  return overall, {length: dict(metrics_lib.finalize(s), users=int(s["count"]))
                   for length, s in sorted(sums.items()) if float(s["count"]) > 0}
