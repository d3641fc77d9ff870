"""TFDS builders that write user sequences as array_record.

Both builders write one split, ``users``: a record per user with ``user_id`` and the
time-ordered ``items``. Everything about items (catalogue size, attribute sets, text) and
the counts of what was filtered go into the dataset's metadata (``metadata.json`` next to
the records), so that a prepared dataset is one self-describing folder.

* ``AmazonSequences`` reads a prepared folder (``sequences.txt`` + optional
  ``item2attributes.json`` / ``item_text.json``, see ``s2gr_jax.data.prepared``). When the
  folder has no ``sequences.txt`` and the dataset is one of the Amazon 2014 5-core
  categories with recorded checksums (beauty, sports), it says so, downloads the raw
  review and metadata files (verified against their SHA-256, ``s2gr_jax.downloads``)
  and applies the S3-Rec preprocessing (``s2gr_jax.data.amazon_raw``); offline, it
  ends with one line naming the missing file and the failed fetch.
* ``SyntheticSequences`` draws the built-in synthetic dataset from its spec and seed.

The builder config's name carries a fingerprint of its inputs (file checksums, or the
synthetic spec), so a changed input builds a new dataset instead of reusing a stale one.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from s2gr_jax import errors
from s2gr_jax.data import prepared
from s2gr_jax.data import synthetic

log = logging.getLogger("s2gr_jax.data")

SPLIT = "users"
_FEATURES = dict(user_id=np.int64, items=tfds.features.Sequence(np.int32))


def _store_metadata(info: tfds.core.DatasetInfo, data: prepared.PreparedDataset,
                    extra: dict) -> None:
  md = info.metadata
  md["name"] = data.name
  md["num_items"] = data.num_items
  md["num_users"] = data.num_users
  md["num_interactions"] = data.num_interactions
  md["item_attributes"] = data.item_attributes
  md["item_text"] = data.item_text
  md["filter_log"] = data.filter_log
  md.update(extra)


class _UserRecords:
  """Both builders write the same records: one per user, keyed by user id."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(_FEATURES),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True)  # records stay in user order

  def _generate_examples(self, data: prepared.PreparedDataset):
    for user, seq in zip(data.user_ids, data.sequences):
      yield int(user), {"user_id": int(user), "items": np.asarray(seq, np.int32)}


@dataclasses.dataclass(eq=False)
class AmazonSequencesConfig(tfds.core.BuilderConfig):
  """Where a prepared dataset lives and how to treat too-short sequences."""
  source_dir: str = ""
  dataset: str = ""
  on_short: str = "error"


class AmazonSequences(_UserRecords, tfds.core.GeneratorBasedBuilder):
  """Amazon-2014-style sequence datasets (beauty, sports, toys, or any prepared folder)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "User sequences + item metadata.",
                   "1.1.0": "Records kept in user order."}

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    if prepared.has_prepared_files(cfg.source_dir):
      data = prepared.read_prepared(cfg.source_dir, cfg.dataset, on_short=cfg.on_short)
      origin = {"source": os.path.abspath(cfg.source_dir),
                "fingerprint": prepared.fingerprint(cfg.source_dir)}
    else:
      data, origin = self._from_raw(dl_manager, cfg)
    _store_metadata(self.info, data, origin)
    return {SPLIT: self._generate_examples(data)}

  def _from_raw(self, dl_manager, cfg):
    from s2gr_jax import downloads  # pylint: disable=g-import-not-at-top
    from s2gr_jax.data import amazon_raw  # pylint: disable=g-import-not-at-top
    seq_path = os.path.join(cfg.source_dir, prepared.SEQUENCES)
    if cfg.dataset not in amazon_raw.RAW_CATEGORIES:
      raise errors.MissingFileError(
          f"missing dataset file: {seq_path} (and '{cfg.dataset}' is not one of the "
          f"downloadable Amazon 2014 categories {sorted(amazon_raw.RAW_CATEGORIES)})")
    download_dir = os.fspath(dl_manager.download_dir)
    try:
      artifacts = amazon_raw.raw_artifacts(cfg.dataset)
      log.warning("%s not found: building '%s' from the raw Amazon 2014 files instead: "
                  "%s, into %s (checked against recorded SHA-256 digests)", seq_path,
                  cfg.dataset, ", ".join(a.urls[0] for a in artifacts.values()),
                  download_dir)
      paths = {part: downloads.fetch(a, download_dir) for part, a in artifacts.items()}
    except errors.DownloadError as e:
      raise errors.DownloadError(
          f"missing dataset file: {seq_path}; the fallback, building it from the raw "
          f"Amazon files, failed: {e}. Put the prepared files (sequences.txt, optional "
          f"item2attributes.json / item_text.json) into {cfg.source_dir}.") from None
    out_dir = os.path.join(download_dir, f"{cfg.dataset}_prepared")
    stats = amazon_raw.prepare_from_raw(paths["reviews"], paths["meta"], out_dir)
    data = prepared.read_prepared(out_dir, cfg.dataset, on_short=cfg.on_short)
    data.filter_log.update({f"raw/{k}": int(v) for k, v in stats.items()})
    return data, {"source": artifacts["reviews"].urls[0],
                  "fingerprint": prepared.fingerprint(out_dir)}


@dataclasses.dataclass(eq=False)
class SyntheticSequencesConfig(tfds.core.BuilderConfig):
  spec: synthetic.SyntheticSpec = dataclasses.field(
      default_factory=synthetic.SyntheticSpec)


class SyntheticSequences(_UserRecords, tfds.core.GeneratorBasedBuilder):
  """The built-in synthetic dataset (see ``s2gr_jax.data.synthetic``)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Hierarchical catalogue, Markov users.",
                   "1.1.0": "Records kept in user order."}

  def _split_generators(self, dl_manager):
    del dl_manager
    spec = self.builder_config.spec
    data = synthetic.generate(spec)
    _store_metadata(self.info, data, {"source": "synthetic",
                                      "spec": dataclasses.asdict(spec)})
    return {SPLIT: self._generate_examples(data)}
