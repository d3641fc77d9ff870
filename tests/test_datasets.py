"""TFDS builders (array_record, no TensorFlow) and ``load_dataset``."""

import dataclasses
import sys

import ml_collections
import numpy as np
import pytest

from s2gr_jax import config_lib
from s2gr_jax.data import datasets
from s2gr_jax.data import synthetic


def data_config(tmp_path, **kw):
  c = config_lib.base_config().data
  c.tfds_dir = str(tmp_path / "tfds")
  c.update(kw)
  return c


def write_toy(folder, seqs="1 1 2 3\n2 3 2 4 1\n3 4 3 2\n"):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "sequences.txt").write_text(seqs)
  (folder / "item2attributes.json").write_text('{"1": [1], "2": [2], "3": [1, 2], "4": [3]}')
  return folder


def test_builds_array_record_and_reads_it_back(tmp_path):
  write_toy(tmp_path / "data" / "toy")
  ds = datasets.load_dataset(data_config(tmp_path, name="toy", dir=str(tmp_path / "data")))
  assert "tensorflow" not in sys.modules
  assert list((tmp_path / "tfds").rglob("*.array_record*"))
  assert ds.num_items == 4 and ds.num_users == 3
  assert ds.user_ids.tolist() == [1, 2, 3]
  assert [s.tolist() for s in ds.sequences] == [[1, 2, 3], [3, 2, 4, 1], [4, 3, 2]]
  assert ds.item_attributes == [[1], [2], [1, 2], [3]]
  # The Grain pipelines read records from the TFDS source itself.
  assert list(ds.source[1]["items"]) == [3, 2, 4, 1]


def test_a_build_finished_first_by_another_run_is_used(tmp_path, monkeypatch):
  """Two runs started together on an empty cache both build; the second one's final
  rename fails (FileExistsError) and it reads the first one's finished copy."""
  write_toy(tmp_path / "data" / "toy")
  cfg = data_config(tmp_path, name="toy", dir=str(tmp_path / "data"))
  real = datasets._make_builder

  class LosesTheRace:
    def __init__(self, builder):
      self.builder = builder

    def __getattr__(self, name):
      return getattr(self.builder, name)

    def is_prepared(self):
      return False  # as seen before the other run finished

    def download_and_prepare(self):
      self.builder.download_and_prepare()  # "the other run" finishes first
      raise FileExistsError("Destination ... already exists.")

  calls = []

  def make(data_cfg):
    calls.append(1)
    builder = real(data_cfg)
    return LosesTheRace(builder) if len(calls) == 1 else builder

  monkeypatch.setattr(datasets, "_make_builder", make)
  ds = datasets.load_dataset(cfg)
  assert len(calls) == 2 and ds.num_users == 3
  assert [s.tolist() for s in ds.sequences] == [[1, 2, 3], [3, 2, 4, 1], [4, 3, 2]]


def test_changed_input_builds_a_new_dataset(tmp_path):
  folder = write_toy(tmp_path / "data" / "toy")
  cfg = data_config(tmp_path, name="toy", dir=str(tmp_path / "data"))
  first = datasets.load_dataset(cfg)
  (folder / "sequences.txt").write_text("1 1 2 3 4\n2 4 3 2\n")
  second = datasets.load_dataset(cfg)
  assert first.fingerprint != second.fingerprint
  assert [s.tolist() for s in second.sequences] == [[1, 2, 3, 4], [4, 3, 2]]


def test_bad_data_reaches_the_user_from_the_builder(tmp_path):
  write_toy(tmp_path / "data" / "toy", seqs="1 1 2 3\n2 3 9 4\n")
  with pytest.raises(ValueError, match=r"sequences.txt:2: item id 9 is out of range"):
    datasets.load_dataset(data_config(tmp_path, name="toy", dir=str(tmp_path / "data")))


def test_missing_data_folder_messages(tmp_path):
  with pytest.raises(ValueError, match="S2GR_DATA_DIR"):
    datasets.load_dataset(data_config(tmp_path, name="beauty", dir=""))
  with pytest.raises(FileNotFoundError, match="data folder not found"):
    datasets.load_dataset(data_config(tmp_path, name="beauty", dir=str(tmp_path / "no")))
  (tmp_path / "data").mkdir()
  with pytest.raises(FileNotFoundError, match="missing dataset file: .*mystery.*not one of "
                     "the downloadable"):
    datasets.load_dataset(data_config(tmp_path, name="mystery", dir=str(tmp_path / "data")))


def test_synthetic_is_deterministic_and_structured():
  spec = synthetic.SyntheticSpec(num_users=300, num_items=200, seed=3)
  a, b = synthetic.generate(spec), synthetic.generate(spec)
  assert all((x == y).all() for x, y in zip(a.sequences, b.sequences))
  assert a.item_attributes == b.item_attributes
  c = synthetic.generate(dataclasses.replace(spec, seed=4))
  assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a.sequences, c.sequences))
  for seq in a.sequences:
    assert spec.min_length <= len(seq) <= spec.max_length
    assert len(set(seq.tolist())) == len(seq)  # no repeated items
    assert seq.min() >= 1 and seq.max() <= spec.num_items
  # Every item's first attribute is its top category: 8 of them.
  assert len({attrs[0] for attrs in a.item_attributes}) == spec.branching[0]


def test_synthetic_through_tfds(tmp_path):
  cfg = data_config(tmp_path, name="synthetic")
  cfg.synthetic.update(num_users=150, num_items=100)
  ds = datasets.load_dataset(cfg)
  direct = synthetic.generate(synthetic.SyntheticSpec(
      **{k: tuple(v) if isinstance(v, tuple) else v
         for k, v in cfg.synthetic.to_dict().items()}))
  assert ds.num_users == 150 and ds.num_items == 100
  assert all((x == y).all() for x, y in zip(ds.sequences, direct.sequences))
  assert ds.item_text[0]["title"] == "Item 1"


def test_beauty_builds_from_the_shared_folder(tmp_path, beauty_dir):
  cfg = data_config(tmp_path, name="beauty", dir=str(beauty_dir.parent))
  ds = datasets.load_dataset(cfg)
  assert (ds.num_users, ds.num_items) == (22363, 12101)
  assert int(sum(len(s) for s in ds.sequences)) == 198502
  first = (beauty_dir / "sequences.txt").read_text().split("\n", 1)[0].split()
  assert ds.user_ids[0] == int(first[0])
  np.testing.assert_array_equal(ds.sequences[0], np.asarray(first[1:], np.int32))
