r"""Export a trained recommender as one serialized JAX function, and serve it.

  python -m s2gr_jax.export export WORKDIR [--out DIR] [--beam 20]
  python -m s2gr_jax.export recommend DIR ITEM_ID [ITEM_ID ...] [--user USER_ID]

``export`` rebuilds the model of a finished run (``config.json``, ``sid/``, the best
checkpoint) and writes ``DIR/recommend.jaxexport`` (``jax.export``, StableHLO with the
parameters and the SID table inside) plus ``DIR/recommend.json`` (shapes and settings).
The exported function is

  recommend(history_items int32[B, H], user_ids int32[B]) -> (item_ids int32[B, K],
                                                             scores float32[B, K])

with a symbolic batch B, histories left-aligned and padded with 0 (only the last H
items count), and contains everything: SID lookup, user hashing, the encoder and the
catalogue-constrained beam search (or SASRec's top-K). Loading needs only ``jax``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from s2gr_jax import fileio
from s2gr_jax.data import batches

EXPORT_FILE = "recommend.jaxexport"
META_FILE = "recommend.json"


def load_trained(workdir: str):
  """(config, SidTable, model) of a finished run, with its best (else last) parameters."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from s2gr_jax import checkpoints as ckpt_lib  # pylint: disable=g-import-not-at-top
  from s2gr_jax import models  # pylint: disable=g-import-not-at-top
  from s2gr_jax import parallel  # pylint: disable=g-import-not-at-top
  from s2gr_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  from s2gr_jax.sid import table as table_lib  # pylint: disable=g-import-not-at-top
  from s2gr_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.from_saved(fileio.read_json(fileio.join(workdir, "config.json")))
  if not models.get(config.model.name).uses_sids:
    results = fileio.read_json(fileio.join(workdir, "results.json"))
    table = table_lib.SidTable.identity(int(results["data/num_items"]))
  else:
    table = table_lib.SidTable.load(fileio.join(workdir, "sid"))
  mesh_cfg = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, rules=()))
  mesh = parallel.make_mesh(mesh_cfg)
  make = models.build(config.model, table, user_buckets=config.data.user_buckets,
                      max_history=config.data.max_history)
  _, model_graphdef, state = train_lib.create_state(
      make, train_lib.make_optimizer(config.train), config.seed, mesh)
  ckpts = ckpt_lib.Checkpoints(workdir, config.checkpoint.max_to_keep)
  try:
    if not ckpts.has_best():
      raise FileNotFoundError(f"{workdir} has no best checkpoint (checkpoints/best) to "
                              "export; train until at least one validation")
    model_state, _ = ckpts.restore_best(state[0])
  finally:
    ckpts.close()
  return config, table, nnx.merge(model_graphdef, model_state)


def history_batch(config, table, history_items, user_ids, target_items=None) -> dict:
  """A model batch from raw histories int[B, H] (left-aligned, 0-padded) and user ids,
  in JAX (``data.batches``; users hashed as in training).

  ``target_items`` (optional) fills the target fields, e.g. to look at the thoughts a
  model forms on the way to a given item.
  """
  return batches.from_histories(
      history_items, table.lookup(),
      batches.hash_users(user_ids, config.data.user_buckets, xp=jnp),
      target_items=target_items, xp=jnp)


def models_search(config) -> str:
  from s2gr_jax import models  # pylint: disable=g-import-not-at-top
  return models.get(config.model.name).search


def recommend_fn(config, table, model, beam: int, index_extras: dict | None = None):
  """The pure function that gets exported: raw histories → top items and scores
  (``index_extras`` go to ``decoding.make_index``)."""
  from s2gr_jax import decoding  # pylint: disable=g-import-not-at-top
  from s2gr_jax import models  # pylint: disable=g-import-not-at-top
  index = decoding.make_index(table, models.get(config.model.name).search,
                              **(index_extras or {}))

  def recommend(history_items, user_ids):
    batch = history_batch(config, table, history_items, user_ids)
    return decoding.recommend(model, batch, index, beam=beam)

  return recommend


def export_recommender(workdir: str, out_dir: str, beam: int = 20) -> str:
  """Writes ``recommend.jaxexport`` + ``recommend.json`` into ``out_dir``; returns the path."""
  config, table, model = load_trained(workdir)
  extras = {}
  cats_path = fileio.join(workdir, "sid", "token_categories.json")
  if models_search(config) == "sets" and fileio.exists(cats_path):
    # REG4Rec's pruning reads the tokens' categories, as the evaluation did
    levels = fileio.read_json(cats_path)["levels"]
    extras["token_category"] = np.concatenate([np.asarray(l, np.int32) for l in levels])
  fn = recommend_fn(config, table, model, beam, extras)
  (b,) = jax.export.symbolic_shape("b")
  h = config.data.max_history
  exported = jax.export.export(jax.jit(fn))(jax.ShapeDtypeStruct((b, h), jnp.int32),
                                            jax.ShapeDtypeStruct((b,), jnp.int32))
  fileio.makedirs(out_dir)
  path = fileio.join(out_dir, EXPORT_FILE)
  fileio.write_bytes(path, bytes(exported.serialize()))
  meta = {"workdir": fileio.absolute(workdir), "model": config.model.name,
          "max_history": h, "beam": beam, "num_items": table.num_items,
          "sid_levels": table.num_levels, "user_buckets": config.data.user_buckets,
          "platforms": list(exported.platforms)}
  fileio.write_json(fileio.join(out_dir, META_FILE), meta, indent=2)
  return str(path)


class Recommender:
  """A loaded export: ``Recommender(dir)(histories, user_ids) -> (items, scores)``."""

  def __init__(self, folder: str):
    self._exported = jax.export.deserialize(
        bytearray(fileio.read_bytes(fileio.join(folder, EXPORT_FILE))))
    self.meta = fileio.read_json(fileio.join(folder, META_FILE))

  def __call__(self, histories, user_ids):
    """histories: lists of item ids, oldest first (the last H are kept), or an int
    array [B, H] left-aligned and padded with 0."""
    if not isinstance(histories, np.ndarray):
      histories = batches.pad_histories(histories, self.meta["max_history"])
    users = np.asarray(user_ids, np.int32)
    items, scores = self._exported.call(jnp.asarray(histories, jnp.int32),
                                        jnp.asarray(users))
    return np.asarray(items), np.asarray(scores)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m s2gr_jax.export", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  e = sub.add_parser("export", help="export a finished run")
  e.add_argument("workdir")
  e.add_argument("--out", default=None, help="default: WORKDIR/export")
  e.add_argument("--beam", type=int, default=20)
  r = sub.add_parser("recommend", help="top items for one history, from an export")
  r.add_argument("folder")
  r.add_argument("items", nargs="+", type=int, help="history item ids, oldest first")
  r.add_argument("--user", type=int, default=0)
  args = p.parse_args(argv)
  if args.command == "export":
    path = export_recommender(args.workdir, args.out or fileio.join(args.workdir, "export"),
                              args.beam)
    print(f"wrote {path}")
  else:
    rec = Recommender(args.folder)
    items, scores = rec([args.items], [args.user])
    for item, score in zip(items[0], scores[0]):
      print(f"{int(item)}\t{float(score):.4f}")


if __name__ == "__main__":
  main()
