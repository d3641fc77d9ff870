"""Tests for s2gr_jax.data.amazon_raw on a tiny hand-checked raw-format fixture.

Fixture (core=3), reviews in file order, times in days:

  line  user  item day      line  user  item day
   1    bob   B    5         12   fay   B    1
   2    hal   C    1         13   cat   B    2
   3    ann   C    2         14   dan   E    2
   4    dan   D    1         15   eve   D    2
   5    ann   A    1         16   fay   B    4   (repeat of line 12)
   6    fay   C    3         17   cat   C    3
   7    cat   A    1         18   bob   C    7
   8    ann   B    2         19   gus   B    2
   9    eve   A    1         20   eve   F    3
  10    bob   A    6         21   fay   A    2
  11    gus   A    1         22   cat   D    4

k-core, pass 1: users dan(2), gus(2), hal(1) and items E(1), F(1) go.
Pass 2: eve is left with A, D (2) and D with cat, eve (2): both go.
Pass 3: stable -> users bob, ann, fay, cat; items A, B, C.
Dropped: 4 users, 3 items, 22 - 13 = 9 interactions.

Time-sorted sequences: bob B A C; ann A C B (C and B are same-day, C is
earlier in the file); fay B(1) A(2) C(3) B(4) -> B A C after removing the
repeat; cat A B C.  User ids by first appearance: bob 1, ann 2, fay 3,
cat 4.  Item ids while reading bob, ann, ...: B 1, A 2, C 3.

Metadata in file order: D (dropped item), A, B, Z (not reviewed, JSON
syntax); C has none.  Attributes: A -> Makeup 1, Lips 2 (brand "Unknown");
B -> L'Oreal 3, Makeup 1, Nails 4, Tools 5 (top-level "Beauty" excluded).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from s2gr_jax.data.amazon_raw import (
  PreparedData,
  RAW_CATEGORIES,
  prepare_from_raw,
  preprocess,
  raw_urls,
  read_metadata,
  read_reviews,
)

DAY = 86400
T0 = 1_388_534_400  # 2014-01-01

REVIEW_ROWS = [  # (reviewer, item letter, day)
  ("bob", "B", 5), ("hal", "C", 1), ("ann", "C", 2), ("dan", "D", 1),
  ("ann", "A", 1), ("fay", "C", 3), ("cat", "A", 1), ("ann", "B", 2),
  ("eve", "A", 1), ("bob", "A", 6), ("gus", "A", 1), ("fay", "B", 1),
  ("cat", "B", 2), ("dan", "E", 2), ("eve", "D", 2), ("fay", "B", 4),
  ("cat", "C", 3), ("bob", "C", 7), ("gus", "B", 2), ("eve", "F", 3),
  ("fay", "A", 2), ("cat", "D", 4),
]  # fmt: skip

META_LINES = [
  "{'asin': 'ASIN_D', 'title': 'Dropped thing', 'brand': 'Zed', "
  "'categories': [['Beauty', 'Tools']]}",
  "{'asin': 'ASIN_A', 'brand': 'Unknown', 'salesRank': {'Beauty': 12}, "
  "'categories': [['Beauty', 'Makeup', 'Lips']]}",
  "{'asin': 'ASIN_B', 'title': 'Nail  Polish &amp; Top\\nCoat', 'brand': \"L'Oreal\", "
  "'related': {'also_bought': ['ASIN_A']}, "
  "'categories': [['Beauty', 'Makeup', 'Nails'], ['Beauty', 'Tools']]}",
  '{"asin": "ASIN_Z", "title": "Zzz", "brand": null, "categories": []}',
]

EXPECTED_SEQUENCES = [[1, 2, 3], [2, 3, 1], [1, 2, 3], [2, 1, 3]]
EXPECTED_REVIEWERS = ["U_bob", "U_ann", "U_fay", "U_cat"]
EXPECTED_ASINS = ["ASIN_B", "ASIN_A", "ASIN_C"]
EXPECTED_ATTRIBUTES = [[3, 1, 4, 5], [1, 2], []]
EXPECTED_TEXT = [
  {
    "asin": "ASIN_B",
    "title": "Nail Polish & Top Coat",
    "brand": "L'Oreal",
    "categories": [["Beauty", "Makeup", "Nails"], ["Beauty", "Tools"]],
  },
  {"asin": "ASIN_A", "title": None, "categories": [["Beauty", "Makeup", "Lips"]]},
  {"asin": "ASIN_C", "title": None, "categories": []},
]
EXPECTED_STATS = {
  "users_raw": 8,
  "items_raw": 6,
  "interactions_raw": 22,
  "users_dropped": 4,
  "items_dropped": 3,
  "interactions_dropped": 9,
  "duplicates_removed": 1,
  "items_without_metadata": 1,
  "attributes": 5,
  "users": 4,
  "items": 3,
  "interactions": 12,
}


def _review_line(reviewer: str, letter: str, day: int) -> str:
  return json.dumps(
    {
      "reviewerID": f"U_{reviewer}",
      "asin": f"ASIN_{letter}",
      "reviewerName": reviewer.title(),
      "helpful": [0, 0],
      "reviewText": "fine",
      "overall": 1.0 + (day % 5),
      "summary": "ok",
      "unixReviewTime": T0 + day * DAY,
      "reviewTime": "01 1, 2014",
    }
  )


def _write_gz(path: Path, lines: list[str]) -> Path:
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return path


@pytest.fixture
def raw_files(tmp_path: Path) -> tuple[Path, Path]:
  reviews = _write_gz(
    tmp_path / "reviews_Beauty_5.json.gz", [_review_line(*row) for row in REVIEW_ROWS]
  )
  meta = _write_gz(tmp_path / "meta_Beauty.json.gz", META_LINES)
  return reviews, meta


@pytest.fixture
def prepared(raw_files: tuple[Path, Path]) -> PreparedData:
  reviews_path, meta_path = raw_files
  reviews = read_reviews(reviews_path)
  return preprocess(reviews, read_metadata(meta_path), core=3)


def test_raw_urls():
  assert RAW_CATEGORIES == {
    "beauty": "Beauty",
    "sports": "Sports_and_Outdoors",
    "toys": "Toys_and_Games",
  }
  assert raw_urls("sports") == {
    "reviews": "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
    "reviews_Sports_and_Outdoors_5.json.gz",
    "meta": "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
    "meta_Sports_and_Outdoors.json.gz",
  }
  with pytest.raises(KeyError, match="beauty, sports, toys"):
    raw_urls("movies")


def test_read_reviews_file_order(raw_files):
  reviews = read_reviews(raw_files[0])
  assert len(reviews) == 22
  assert reviews[0] == ("U_bob", "ASIN_B", T0 + 5 * DAY)
  assert reviews[-1] == ("U_cat", "ASIN_D", T0 + 4 * DAY)
  assert [r[0] for r in reviews[:3]] == ["U_bob", "U_hal", "U_ann"]


def test_read_reviews_plain_text(tmp_path):
  path = tmp_path / "reviews.json"
  path.write_text(_review_line("ann", "A", 1) + "\n\n" + _review_line("bob", "B", 2) + "\n")
  assert read_reviews(path) == [
    ("U_ann", "ASIN_A", T0 + DAY),
    ("U_bob", "ASIN_B", T0 + 2 * DAY),
  ]


def test_read_metadata_literal_and_json(raw_files):
  meta = read_metadata(raw_files[1])
  assert list(meta) == ["ASIN_D", "ASIN_A", "ASIN_B", "ASIN_Z"]
  assert meta["ASIN_B"]["brand"] == "L'Oreal"
  assert meta["ASIN_A"]["salesRank"] == {"Beauty": 12}
  assert meta["ASIN_Z"]["brand"] is None  # parsed through the JSON fallback

  kept = read_metadata(raw_files[1], keep_asins={"ASIN_B", "ASIN_A", "ASIN_C"})
  assert list(kept) == ["ASIN_A", "ASIN_B"]


def test_preprocess_sequences_and_ids(prepared):
  assert prepared.user_reviewers == EXPECTED_REVIEWERS
  assert prepared.item_asins == EXPECTED_ASINS
  assert prepared.sequences == EXPECTED_SEQUENCES
  assert (prepared.num_users, prepared.num_items) == (4, 3)


def test_preprocess_attributes_text_and_stats(prepared):
  assert prepared.item_attributes == EXPECTED_ATTRIBUTES
  assert prepared.item_text == EXPECTED_TEXT
  assert prepared.stats == EXPECTED_STATS


def test_kcore_is_iterated_to_a_fixed_point(raw_files):
  """eve has 3 reviews and D 3 reviewers at first; both only fall in pass 2."""
  reviews = read_reviews(raw_files[0])
  data = preprocess(reviews, {}, core=3)
  assert "U_eve" not in data.user_reviewers and "ASIN_D" not in data.item_asins
  # core=2: pass 1 drops hal, E, F; dan is then left with D alone and goes in pass 2,
  # while eve keeps A, D (D still has cat and eve).
  data2 = preprocess(reviews, {}, core=2)
  assert data2.user_reviewers == ["U_bob", "U_ann", "U_fay", "U_cat", "U_eve", "U_gus"]
  assert data2.item_asins == ["ASIN_B", "ASIN_A", "ASIN_C", "ASIN_D"]
  assert data2.stats["users_dropped"] == 2
  assert data2.stats["items_dropped"] == 2
  assert data2.stats["items_without_metadata"] == 4
  assert data2.item_attributes == [[]] * 4


def test_prepare_from_raw_writes_files(raw_files, tmp_path):
  out = tmp_path / "out" / "beauty"
  stats = prepare_from_raw(*raw_files, out, core=3)
  assert stats == EXPECTED_STATS
  assert sorted(p.name for p in out.iterdir()) == [
    "item2attributes.json",
    "item_asin.tsv",
    "item_text.json",
    "sequences.txt",
    "user_reviewer.tsv",
  ]
  assert (out / "sequences.txt").read_text() == "1 1 2 3\n2 2 3 1\n3 1 2 3\n4 2 1 3\n"
  assert json.loads((out / "item2attributes.json").read_text()) == {
    "1": [3, 1, 4, 5],
    "2": [1, 2],
    "3": [],
  }
  text = json.loads((out / "item_text.json").read_text(encoding="utf-8"))
  assert text == {str(i): t for i, t in enumerate(EXPECTED_TEXT, start=1)}
  assert (out / "item_asin.tsv").read_text() == (
    "item_id\tasin\n1\tASIN_B\n2\tASIN_A\n3\tASIN_C\n"
  )
  assert (out / "user_reviewer.tsv").read_text() == (
    "user_id\treviewer_id\n1\tU_bob\n2\tU_ann\n3\tU_fay\n4\tU_cat\n"
  )


def test_bad_json_line_names_file_and_line(tmp_path):
  path = tmp_path / "reviews_bad.json.gz"
  _write_gz(path, [_review_line("ann", "A", 1), _review_line("ann", "B", 2), "{not json"])
  with pytest.raises(ValueError, match="bad JSON") as err:
    read_reviews(path)
  assert str(path) in str(err.value) and "line 3" in str(err.value)


@pytest.mark.parametrize(
  ("record", "expected"),
  [
    ({"asin": "ASIN_A", "unixReviewTime": 1}, "missing key.*reviewerID"),
    ({"reviewerID": "U", "asin": "A", "unixReviewTime": "01 1, 2014"}, "must be an integer"),
    ({"reviewerID": "U", "asin": "A", "unixReviewTime": 1.5}, "must be an integer"),
    ([1, 2], "expected a JSON object"),
  ],
)
def test_malformed_review_records(tmp_path, record, expected):
  path = tmp_path / "reviews.json"
  path.write_text(_review_line("ann", "A", 1) + "\n" + json.dumps(record) + "\n")
  with pytest.raises(ValueError, match=expected) as err:
    read_reviews(path)
  assert f"{path}, line 2" in str(err.value)


def test_bad_metadata_line_names_file_and_line(tmp_path):
  path = _write_gz(tmp_path / "meta.json.gz", [META_LINES[1], "{'asin': 'X', 'title': "])
  with pytest.raises(ValueError, match="line 2") as err:
    read_metadata(path)
  assert str(path) in str(err.value)
  no_asin = _write_gz(tmp_path / "meta2.json.gz", ["{'title': 'no asin'}"])
  with pytest.raises(ValueError, match="line 1.*asin"):
    read_metadata(no_asin)


def test_missing_files(tmp_path, raw_files):
  missing = tmp_path / "nope" / "reviews_Beauty_5.json.gz"
  with pytest.raises(FileNotFoundError, match="reviews_Beauty_5"):
    read_reviews(missing)
  with pytest.raises(FileNotFoundError, match="meta_Nope"):
    read_metadata(tmp_path / "meta_Nope.json.gz")
  with pytest.raises(FileNotFoundError):
    prepare_from_raw(raw_files[0], tmp_path / "meta_Nope.json.gz", tmp_path / "out")


def test_everything_filtered_raises(raw_files, tmp_path):
  with pytest.raises(ValueError, match="nothing survives the 5-core.*8 users, 6 items, 22"):
    prepare_from_raw(*raw_files, tmp_path / "out")  # default core=5: max 4 reviews/user
  assert not (tmp_path / "out").exists()


def test_core_must_be_positive():
  with pytest.raises(ValueError, match="core"):
    preprocess([("U", "A", 1)], {}, core=0)

