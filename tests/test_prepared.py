"""The prepared format: parsing, validation and the errors users see."""

import json

import numpy as np
import pytest

from s2gr_jax.data import prepared


def write(folder, sequences: str, attributes=None, text=None):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "sequences.txt").write_text(sequences)
  if attributes is not None:
    (folder / "item2attributes.json").write_text(json.dumps(attributes))
  if text is not None:
    (folder / "item_text.json").write_text(json.dumps(text))
  return folder


def test_reads_sequences_and_metadata(tmp_path):
  folder = write(tmp_path / "toy", "1 1 2 3\n2 3 2 4 1\n\n",
                 attributes={str(i): [i] for i in range(1, 6)},
                 text={str(i): {"title": f"t{i}"} for i in range(1, 6)})
  data = prepared.read_prepared(str(folder))
  assert data.name == "toy"
  assert data.num_items == 5  # the catalogue comes from the JSON keys
  assert data.user_ids.tolist() == [1, 2]
  assert [s.tolist() for s in data.sequences] == [[1, 2, 3], [3, 2, 4, 1]]
  assert data.item_attributes[4] == [5]
  assert data.item_text[0]["title"] == "t1"
  assert data.filter_log == {"items_never_interacted": 1}  # item 5 is never used


def test_catalogue_without_metadata_is_max_id(tmp_path):
  data = prepared.read_prepared(str(write(tmp_path / "d", "7 1 2 9\n")))
  assert data.num_items == 9
  assert data.filter_log["items_never_interacted"] == 6


@pytest.mark.parametrize("content, message", [
    ("1 1 2 3\n2 1 x 3\n", "sequences.txt:2: item id 'x' is not an integer"),
    ("1 1 2 3\nu 1 2 3\n", "sequences.txt:2: user id 'u' is not an integer"),
    ("1 1 2 3\n\n2 1 2 3\n", "sequences.txt:2: empty line"),
    ("1 1 2 3\n2\n", "sequences.txt:2: user 2 has an empty item sequence"),
    ("1 1 2 3\n1 3 2 1\n", "sequences.txt:2: user id 1 already appeared on line 1"),
    ("1 1 0 3\n", "sequences.txt:1: item id 0 must be a positive integer"),
    ("1 1 2 3\n2 1 -4 3\n", "sequences.txt:2: item id -4 must be a positive"),
    ("1 1 2 3\n2 4 1\n", "sequences.txt:2: user 2 has 2 items; leave-one-out needs at "
     "least 3"),
    ("", "no users (the file is empty)"),
])
def test_malformed_sequences_name_file_and_line(tmp_path, content, message):
  folder = write(tmp_path / "bad", content)
  with pytest.raises(prepared.DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
    prepared.read_prepared(str(folder))


def test_out_of_range_item(tmp_path):
  folder = write(tmp_path / "d", "1 1 2 3\n2 1 2 6\n",
                 attributes={str(i): [1] for i in range(1, 6)})
  with pytest.raises(prepared.DataError,
                     match=r"sequences.txt:2: item id 6 is out of range \(catalogue has "
                     r"items 1..5\)"):
    prepared.read_prepared(str(folder))


def test_short_sequences_can_be_dropped_and_are_counted(tmp_path):
  folder = write(tmp_path / "d", "1 1 2 3\n2 4 1\n3 2 1 4 3\n")
  data = prepared.read_prepared(str(folder), on_short="drop")
  assert data.user_ids.tolist() == [1, 3]
  assert data.filter_log["users_too_short"] == 1


def test_missing_files_and_bad_json(tmp_path):
  with pytest.raises(FileNotFoundError, match="dataset folder not found"):
    prepared.read_prepared(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="missing dataset file: .*sequences.txt"):
    prepared.read_prepared(str(tmp_path / "empty"))
  folder = write(tmp_path / "j", "1 1 2 3\n")
  (folder / "item2attributes.json").write_text('{"1": [1],\n "2": [2,}')
  with pytest.raises(prepared.DataError, match=r"item2attributes.json:2: invalid JSON"):
    prepared.read_prepared(str(folder))
  folder = write(tmp_path / "gap", "1 1 2 3\n", attributes={"1": [1], "2": [1], "4": [1]})
  with pytest.raises(prepared.DataError, match=r"exactly 1..4; missing e.g. \[3\]"):
    prepared.read_prepared(str(folder))
  folder = write(tmp_path / "attr", "1 1 2 3\n", attributes={"1": [1], "2": "a", "3": [1]})
  with pytest.raises(prepared.DataError, match="item 2: attributes must be a list"):
    prepared.read_prepared(str(folder))


def test_real_beauty_matches_its_readme(beauty_dir):
  data = prepared.read_prepared(str(beauty_dir))
  assert (data.num_users, data.num_items, data.num_interactions) == (22363, 12101, 198502)
  lengths = np.asarray([len(s) for s in data.sequences])
  assert lengths.min() == 5 and lengths.max() == 204
  assert all(1 <= len(a) <= 6 for a in data.item_attributes)
  assert sum(r.get("title") is not None for r in data.item_text) == 12094
