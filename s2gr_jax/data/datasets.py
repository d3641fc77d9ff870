"""Builds (once) and opens a sequence dataset: files → TFDS array_record → data source.

``load_dataset(config.data)`` is the only entry the rest of the project uses. It runs the
right TFDS builder into ``data.tfds_dir`` (a no-op when that build exists), opens the
``users`` split with ``tfds.data_source``-style random access, and returns it together
with the item metadata and the user sequences held in memory (the split, the baselines
and evaluation need them; Beauty is 200k integers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from typing import Any

from absl import logging as absl_logging
import logging
import numpy as np
import tensorflow_datasets as tfds

from s2gr_jax import errors
from s2gr_jax.data import prepared
from s2gr_jax.data import synthetic
from s2gr_jax.data.builders import sequences as builders

log = logging.getLogger(__name__)

DATA_DIR_ENV = "S2GR_DATA_DIR"
TFDS_DIR_ENV = "S2GR_TFDS_DIR"


@dataclasses.dataclass
class SequenceDataset:
  """A prepared dataset, opened.

  Attributes:
    name: dataset name.
    num_items: catalogue size; item ids are ``1..num_items``, 0 is padding.
    source: random-access source of ``{"user_id": int, "items": list[int]}`` records
      (the TFDS ``users`` split), read by the Grain pipelines.
    user_ids: int64[num_users].
    sequences: per user, int32[length] item ids in time order.
    item_attributes: per item (index ``item_id - 1``) attribute ids, or None.
    item_text: per item (index ``item_id - 1``) text record, or None.
    filter_log: counts of users/items removed by a rule while preparing the data.
    fingerprint: identifies the exact input (the TFDS config name carries a checksum of
      the source files or the synthetic spec).
  """

  name: str
  num_items: int
  source: Any
  user_ids: np.ndarray
  sequences: list[np.ndarray]
  item_attributes: list[list[int]] | None
  item_text: list[dict] | None
  filter_log: dict[str, int]
  fingerprint: str = ""

  @property
  def num_users(self) -> int:
    return len(self.sequences)

  def summary(self) -> str:
    lengths = np.asarray([len(s) for s in self.sequences])
    return (f"{self.name}: {self.num_users:,} users, {self.num_items:,} items, "
            f"{int(lengths.sum()):,} interactions, length mean {lengths.mean():.2f} "
            f"/ median {np.median(lengths):.0f} / max {lengths.max()}")


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS logs every custom config and file it touches; keep only its warnings."""
  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(level)


def default_tfds_dir() -> str:
  return os.environ.get(TFDS_DIR_ENV) or os.path.join(
      os.path.expanduser("~"), ".cache", "s2gr_jax", "tfds")


def _short_hash(obj: Any) -> str:
  return hashlib.md5(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _make_builder(data_cfg) -> tfds.core.DatasetBuilder:
  tfds_dir = data_cfg.tfds_dir or default_tfds_dir()
  if data_cfg.name == "synthetic":
    spec = synthetic.SyntheticSpec(**{
        k: tuple(v) if isinstance(v, (list, tuple)) else v
        for k, v in data_cfg.synthetic.to_dict().items()})
    spec.validate()
    config = builders.SyntheticSequencesConfig(
        name=f"s_{_short_hash(dataclasses.asdict(spec))}", spec=spec)
    return builders.SyntheticSequences(config=config, data_dir=tfds_dir,
                                       file_format="array_record")
  if not data_cfg.dir:
    raise errors.InputError(
        f"dataset '{data_cfg.name}' needs a data folder: set the environment variable "
        f"{DATA_DIR_ENV} (a folder with one sub-folder per dataset) or "
        "--config.data.dir=...")
  if not os.path.isdir(data_cfg.dir):
    raise errors.MissingFileError(f"data folder not found: {data_cfg.dir} (from data.dir "
                                  f"/ {DATA_DIR_ENV})")
  source_dir = os.path.join(data_cfg.dir, data_cfg.name)
  fp = (prepared.fingerprint(source_dir) if prepared.has_prepared_files(source_dir)
        else "raw")
  suffix = "_dropshort" if data_cfg.on_short_sequence == "drop" else ""
  config = builders.AmazonSequencesConfig(
      name=f"{data_cfg.name}_{fp[:12]}{suffix}", source_dir=source_dir,
      dataset=data_cfg.name, on_short=data_cfg.on_short_sequence)
  return builders.AmazonSequences(config=config, data_dir=tfds_dir,
                                  file_format="array_record")


def load_dataset(data_cfg) -> SequenceDataset:
  """Builds the dataset if needed and opens it (see module docstring)."""
  with _quiet_tfds():
    builder = _make_builder(data_cfg)
    if not builder.is_prepared():
      log.info("Preparing dataset %s into %s", builder.builder_config.name,
                      builder.data_dir)
      tfds.disable_progress_bar()
      try:
        builder.download_and_prepare()
      except FileExistsError:
        # Another run prepared the same version at the same time and renamed its
        # finished copy into place first; that copy is complete, so read it.
        builder = _make_builder(data_cfg)
        if not builder.is_prepared():
          raise
        log.info("Dataset %s was prepared by another run meanwhile; using it",
                 builder.builder_config.name)
    source = builder.as_data_source(split=builders.SPLIT)
  md = builder.info.metadata
  records = source.__getitems__(list(range(len(source))))
  sequences = [np.asarray(r["items"], np.int32) for r in records]
  user_ids = np.asarray([int(r["user_id"]) for r in records], np.int64)
  ds = SequenceDataset(
      name=md["name"], num_items=int(md["num_items"]), source=source,
      user_ids=user_ids, sequences=sequences,
      item_attributes=md.get("item_attributes"), item_text=md.get("item_text"),
      filter_log={k: int(v) for k, v in (md.get("filter_log") or {}).items()},
      fingerprint=builder.builder_config.name)
  log.info("Dataset %s", ds.summary())
  for rule, count in sorted(ds.filter_log.items()):
    log.info("  filtered/unused by rule '%s': %d", rule, count)
  return ds
