"""Raw Amazon Review Data (2014, "5-core") -> the project's prepared format.

The standard Beauty / Sports / Toys sequential-recommendation benchmarks
(S3-Rec, and every Semantic-ID paper that reuses its splits) are built from
the UCSD files of McAuley et al.  This module reproduces that preprocessing
from the raw files, so that the prepared data can be rebuilt and audited
instead of being trusted as an opaque download.

Raw inputs (one category each):

* ``reviews_{Category}_5.json.gz`` -- gzip, one JSON object per line with
 ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime`` (int seconds,
 day resolution).
* ``meta_{Category}.json.gz`` -- gzip, one *Python dict literal* per line
 (single quotes), parsed with :func:`ast.literal_eval` and, failing that,
 :func:`json.loads`.  Keys used: ``asin``, ``title``, ``brand``,
 ``categories`` (a list of category paths, each a list of strings).

Preprocessing rules, in the order they are applied:

1. Every review is kept whatever its rating (the benchmarks treat a review
  as an implicit interaction).  Reviews are grouped by user in file order
  and each user's reviews are sorted by ``unixReviewTime`` with a *stable*
  sort: times only have day resolution, so same-day reviews keep the order
  in which they appear in the raw file (this is what Python's ``sorted``
  did in the original script, and it decides the order of many pairs).
2. k-core filter (``core``, 5 by default): users with fewer than ``core``
  interactions and items with fewer than ``core`` interactions are removed,
  repeatedly, until nothing changes.  The k-core is unique, so the removal
  order does not matter.  Dropped users / items / interactions are counted
  in ``stats`` so the caller can log them.
3. Repeated (user, item) pairs: only the first occurrence in the user's
  time-sorted sequence is kept; the rest are counted as
  ``duplicates_removed``.  Because this runs after the k-core filter (as in
  the original pipeline, where duplicates counted towards the core), a user
  may end up with fewer than ``core`` distinct items; it is rare in the
  real 5-core files and is visible through the counts.
4. Ids: users are numbered ``1..U`` in the order of their first appearance
  in the reviews file; items ``1..I`` in the order they are first met while
  reading the users' time-sorted sequences in user-id order.  Id 0 is left
  free for padding.
5. Attributes (S3-Rec style): walking the metadata file in file order and
  looking only at kept items, an item's attributes are its ``brand`` (when
  present, non-empty and not ``"Unknown"``) followed by every category name
  of every ``categories`` path except the top-level one (``path[0]``, which
  is the dataset's own category and carries no information).  Brands and
  category names share one vocabulary; attribute ids ``1..A`` are given in
  order of first appearance during that walk, and an item lists each of its
  attributes once.  Kept items without metadata get no attributes and are
  counted as ``items_without_metadata``.
6. Item text: ``{"asin", "title", "brand", "categories"}`` per item.  The
  title is HTML-unescaped (the raw titles contain ``&amp;`` and friends)
  with runs of whitespace collapsed, and is ``None`` when missing or empty;
  ``brand`` is present only when known (same rule as in 5); ``categories``
  is the list of paths as given.

Output files written by :func:`write_prepared` into ``out_dir``:

* ``sequences.txt`` -- ``user_id item_id item_id ...`` per line, by user id.
* ``item2attributes.json`` -- ``{"<item_id>": [attr_id, ...]}``, all items.
* ``item_text.json`` -- ``{"<item_id>": {...}}`` as in rule 6.
* ``item_asin.tsv`` -- header ``item_id<TAB>asin``, one row per item.
* ``user_reviewer.tsv`` -- header ``user_id<TAB>reviewer_id``, one row per user.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import gzip
import html
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
import zlib

from s2gr_jax import errors

PathLike = str | os.PathLike[str]
Review = tuple[str, str, int]  # (reviewer_id, asin, unix_time)

RAW_BASE_URL = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
# The same files over plain http, tried when https fails (the checksum decides anyway).
RAW_FALLBACK_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
RAW_CATEGORIES: dict[str, str] = {
  "beauty": "Beauty",
  "sports": "Sports_and_Outdoors",
  "toys": "Toys_and_Games",
}
# SHA-256 and size of the raw files, checked before use. SNAP publishes no checksums;
# these are the digests of independent public copies, which agree with each other
# (Beauty: Git LFS pointers of namejun12000/SentimentLLM fb25ada and the HF dataset
# cmulgy/beauty, and the list in ShyJason/CaIRec docs/DATASETS.md; Sports: the LFS
# pointers of Serendipity0429/Amazon-Dataset 8cc869f). No copy with a recorded digest
# of the Toys files was found, so they are not downloaded: a Toys folder must hold the
# prepared files (or the raw files, with a digest added here).
RAW_SHA256: dict[str, tuple[str, int]] = {
  "reviews_Beauty_5.json.gz":
    ("e5925ec99023f1dc9c7d3dff7ef34cfeacd40d1b981b5525e1e4ba9c8abc18fe", 44_819_276),
  "meta_Beauty.json.gz":
    ("c7977dc0e0ead14ac7df8c1c6de74da00e4bebfad87a0f0c5763d4c5bc9b53a0", 99_156_148),
  "reviews_Sports_and_Outdoors_5.json.gz":
    ("8130a2206c3062db1b4b9d4353efc303b0ebd13f48372559fee26c47a1d7fe51", 68_275_834),
  "meta_Sports_and_Outdoors.json.gz":
    ("677108a0fe0f47cce08885a348879a5a89dd69e75fbc5d66410ae436750df086", 183_143_051),
}


def raw_urls(name: str) -> dict[str, str]:
  """Public download URLs of the raw reviews and metadata for a dataset name."""
  try:
    category = RAW_CATEGORIES[name]
  except KeyError:
    known = ", ".join(sorted(RAW_CATEGORIES))
    raise KeyError(f"unknown Amazon dataset {name!r}; known names: {known}") from None
  return {
    "reviews": f"{RAW_BASE_URL}/reviews_{category}_5.json.gz",
    "meta": f"{RAW_BASE_URL}/meta_{category}.json.gz",
  }


def raw_artifacts(name: str) -> dict[str, "downloads.Artifact"]:
  """The raw files of a dataset as verified downloads; a ``DownloadError`` when no
  checksum is recorded for them (they are then never fetched)."""
  from s2gr_jax import downloads  # pylint: disable=g-import-not-at-top
  out = {}
  for part, url in raw_urls(name).items():
    fname = url.rsplit("/", 1)[1]
    if fname not in RAW_SHA256:
      raise errors.DownloadError(
        f"no checksum of {fname} is recorded in s2gr_jax (amazon_raw.RAW_SHA256), so it "
        "is not downloaded")
    sha256, size = RAW_SHA256[fname]
    out[part] = downloads.Artifact(
      name=fname, urls=(url, f"{RAW_FALLBACK_URL}/{fname}"), sha256=sha256, size=size)
  return out


_REVIEW_KEYS = ("reviewerID", "asin", "unixReviewTime")
_UNKNOWN_BRAND = "Unknown"
# Metadata lines start with the asin; reading it cheaply lets read_metadata
# skip the (slow) literal_eval for the many items outside the 5-core.
_LEADING_ASIN = re.compile(r"""^\s*\{\s*['"]asin['"]\s*:\s*['"]([^'"\\]*)['"]""")


# ----------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------


def _numbered_lines(path: PathLike) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, line) of a gzip or plain UTF-8 text file.

  Gzip is detected from the magic bytes, not the suffix, so decompressed
  copies work too.
  """
  path = Path(path)
  if not path.is_file():
    raise errors.MissingFileError(f"raw Amazon file not found: {path}")
  with open(path, "rb") as probe:
    is_gzip = probe.read(2) == b"\x1f\x8b"
  opener = gzip.open if is_gzip else open
  lineno = 0
  try:
    with opener(path, "rb") as f:
      for lineno, raw in enumerate(f, start=1):
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise errors.DataError(f"{path}, line {lineno}: not UTF-8 text (byte "
                                 f"0x{raw[e.start]:02x} at column {e.start + 1})") from None
        if line.strip():
          yield lineno, line
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise errors.DataError(f"{path}, after line {lineno}: the gzip stream is damaged or "
                           f"truncated ({e or type(e).__name__}); delete the file to "
                           "fetch it again") from None


def _parse_review(line: str, path: PathLike, lineno: int) -> Review:
  """One reviews line -> (reviewer_id, asin, time); ValueError says where and why."""
  where = f"{path}, line {lineno}"
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise errors.DataError(f"{where}: bad JSON ({e.msg} at column {e.colno})") from None
  except (ValueError, RecursionError) as e:  # e.g. an integer of too many digits
    raise errors.DataError(f"{where}: bad JSON ({e or type(e).__name__})") from None
  if not isinstance(obj, dict):
    raise errors.DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  missing = [k for k in _REVIEW_KEYS if k not in obj]
  if missing:
    raise errors.DataError(f"{where}: missing key(s) {', '.join(missing)}")
  reviewer, asin, when = obj["reviewerID"], obj["asin"], obj["unixReviewTime"]
  for key, value in (("reviewerID", reviewer), ("asin", asin)):
    if not isinstance(value, str) or not value:
      raise errors.DataError(f"{where}: {key} must be a non-empty string, got {value!r}")
  if isinstance(when, bool) or not isinstance(when, int):
    raise errors.DataError(f"{where}: unixReviewTime must be an integer, got {when!r}")
  return reviewer, asin, when


def read_reviews(path: PathLike) -> list[Review]:
  """All reviews of a raw reviews file as (reviewer_id, asin, unix_time), in file order."""
  return [_parse_review(line, path, lineno) for lineno, line in _numbered_lines(path)]


def _parse_meta(line: str, path: PathLike, lineno: int) -> dict[str, Any]:
  """One metadata line (Python literal, or JSON as a fallback) -> dict with an asin."""
  where = f"{path}, line {lineno}"
  try:
    record = ast.literal_eval(line.strip())
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    try:
      record = json.loads(line)
    except (ValueError, RecursionError):
      raise errors.DataError(
        f"{where}: metadata line is neither a Python dict literal nor JSON"
      ) from None
  if not isinstance(record, dict):
    raise errors.DataError(f"{where}: metadata record is a {type(record).__name__}, not a dict")
  if not isinstance(record.get("asin"), str) or not record["asin"]:
    raise errors.DataError(f"{where}: metadata record has no 'asin' string")
  return record


def read_metadata(
  path: PathLike, keep_asins: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
  """asin -> metadata record, insertion order = file order.

  With ``keep_asins`` only those items are returned, and lines whose leading
  asin is visibly outside the set are skipped unparsed (the metadata files
  cover the whole category, mostly items that never reach the 5-core), so
  such lines are not validated.  The first record of a repeated asin wins.
  """
  keep = None if keep_asins is None else set(keep_asins)
  records: dict[str, dict[str, Any]] = {}
  for lineno, line in _numbered_lines(path):
    if keep is not None:
      leading = _LEADING_ASIN.match(line)
      if leading and leading.group(1) not in keep:
        continue
    record = _parse_meta(line, path, lineno)
    asin = record["asin"]
    if (keep is None or asin in keep) and asin not in records:
      records[asin] = record
  return records


# ----------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class PreparedData:
  """A preprocessed dataset; list index ``k`` holds user / item id ``k + 1``."""

  sequences: list[list[int]]  # item ids per user, time order
  user_reviewers: list[str]
  item_asins: list[str]
  item_attributes: list[list[int]]
  item_text: list[dict[str, Any]]
  stats: dict[str, int]

  @property
  def num_users(self) -> int:
    return len(self.sequences)

  @property
  def num_items(self) -> int:
    return len(self.item_asins)


UserSeqs = dict[str, list[tuple[str, int]]]  # reviewer -> [(asin, time)], time order


def _group_by_user(reviews: Iterable[Review]) -> UserSeqs:
  """Per-user (asin, time) lists, users in first-appearance order, stably time-sorted."""
  seqs: UserSeqs = {}
  for reviewer, asin, when in reviews:
    seqs.setdefault(reviewer, []).append((asin, when))
  for seq in seqs.values():
    seq.sort(key=lambda pair: pair[1])  # list.sort is stable: same-day keeps file order
  return seqs


def _kcore(seqs: UserSeqs, core: int) -> UserSeqs:
  """Drops users and items with < ``core`` interactions until none is left to drop."""
  while True:
    item_counts = collections.Counter(asin for seq in seqs.values() for asin, _ in seq)
    bad_items = {asin for asin, n in item_counts.items() if n < core}
    bad_users = {user for user, seq in seqs.items() if len(seq) < core}
    if not bad_items and not bad_users:
      return seqs
    seqs = {
      user: [pair for pair in seq if pair[0] not in bad_items]
      for user, seq in seqs.items()
      if user not in bad_users
    }


def _drop_repeats(seqs: UserSeqs) -> tuple[UserSeqs, int]:
  """Keeps each (user, item) pair's first occurrence; returns the count removed."""
  out: UserSeqs = {}
  removed = 0
  for user, seq in seqs.items():
    seen: set[str] = set()
    kept = []
    for asin, when in seq:
      if asin in seen:
        removed += 1
        continue
      seen.add(asin)
      kept.append((asin, when))
    out[user] = kept
  return out, removed


def _item_ids(seqs: UserSeqs) -> dict[str, int]:
  """asin -> id 1..I by first appearance across the sequences read in user order."""
  ids: dict[str, int] = {}
  for seq in seqs.values():
    for asin, _ in seq:
      ids.setdefault(asin, len(ids) + 1)
  return ids


def _known_brand(record: Mapping[str, Any] | None) -> str | None:
  """The record's brand, or None when missing, empty or the placeholder 'Unknown'."""
  brand = (record or {}).get("brand")
  if not isinstance(brand, str):
    return None
  brand = brand.strip()
  return brand if brand and brand != _UNKNOWN_BRAND else None


def _category_paths(record: Mapping[str, Any] | None) -> list[list[str]]:
  """The record's category paths as lists of strings (malformed entries ignored)."""
  paths = (record or {}).get("categories") or []
  return [[str(c) for c in path] for path in paths if isinstance(path, (list, tuple))]


def _attribute_names(record: Mapping[str, Any]) -> list[str]:
  """Brand then non-top-level category names, each once, in order of appearance."""
  names = [] if _known_brand(record) is None else [_known_brand(record)]
  names += [name for path in _category_paths(record) for name in path[1:]]
  return list(dict.fromkeys(names))


def _attributes(
  item_ids: Mapping[str, int], metadata: Mapping[str, Mapping[str, Any]]
) -> tuple[list[list[int]], int]:
  """Per-item attribute ids (ids given in metadata-file order) and the vocabulary size."""
  per_item: list[list[int]] = [[] for _ in item_ids]
  vocab: dict[str, int] = {}
  for asin, record in metadata.items():
    item = item_ids.get(asin)
    if item is None:
      continue
    per_item[item - 1] = [
      vocab.setdefault(name, len(vocab) + 1) for name in _attribute_names(record)
    ]
  return per_item, len(vocab)


def _clean_title(title: Any) -> str | None:
  """HTML-unescaped title with collapsed whitespace; None when missing or blank."""
  if not isinstance(title, str):
    return None
  return " ".join(html.unescape(title).split()) or None


def _item_text(asin: str, record: Mapping[str, Any] | None) -> dict[str, Any]:
  """The text fields of one item (record None when the item has no metadata)."""
  text: dict[str, Any] = {"asin": asin, "title": _clean_title((record or {}).get("title"))}
  brand = _known_brand(record)
  if brand is not None:
    text["brand"] = " ".join(html.unescape(brand).split())
  text["categories"] = _category_paths(record)
  return text


def preprocess(
  reviews: Iterable[Review],
  metadata: Mapping[str, Mapping[str, Any]],
  *,
  core: int = 5,
) -> PreparedData:
  """Applies rules 1-6 of the module docstring to reviews and asin -> metadata."""
  if isinstance(core, bool) or not isinstance(core, int) or core < 1:
    raise ValueError(f"core must be a positive integer, got {core!r}")
  raw = _group_by_user(reviews)
  stats = {
    "users_raw": len(raw),
    "items_raw": len({asin for seq in raw.values() for asin, _ in seq}),
    "interactions_raw": sum(len(seq) for seq in raw.values()),
  }
  cored = _kcore(raw, core)
  if not cored:
    raise errors.DataError(
      f"nothing survives the {core}-core filter: {stats['users_raw']} users, "
      f"{stats['items_raw']} items, {stats['interactions_raw']} interactions in, none out"
    )
  kept_items = {asin for seq in cored.values() for asin, _ in seq}
  stats["users_dropped"] = stats["users_raw"] - len(cored)
  stats["items_dropped"] = stats["items_raw"] - len(kept_items)
  stats["interactions_dropped"] = stats["interactions_raw"] - sum(len(s) for s in cored.values())

  seqs, stats["duplicates_removed"] = _drop_repeats(cored)
  item_ids = _item_ids(seqs)
  item_asins = list(item_ids)
  item_attributes, stats["attributes"] = _attributes(item_ids, metadata)
  stats["items_without_metadata"] = sum(asin not in metadata for asin in item_asins)
  stats["users"] = len(seqs)
  stats["items"] = len(item_asins)
  stats["interactions"] = sum(len(seq) for seq in seqs.values())

  return PreparedData(
    sequences=[[item_ids[asin] for asin, _ in seq] for seq in seqs.values()],
    user_reviewers=list(seqs),
    item_asins=item_asins,
    item_attributes=item_attributes,
    item_text=[_item_text(asin, metadata.get(asin)) for asin in item_asins],
    stats=stats,
  )


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
  path.write_text(text, encoding="utf-8", newline="\n")


def _write_json(path: Path, obj: Any) -> None:
  _write_text(path, json.dumps(obj, ensure_ascii=False) + "\n")


def _write_tsv(path: Path, header: tuple[str, str], values: list[str]) -> None:
  rows = ["\t".join(header)] + [f"{i}\t{v}" for i, v in enumerate(values, start=1)]
  _write_text(path, "\n".join(rows) + "\n")


def write_prepared(data: PreparedData, out_dir: PathLike) -> None:
  """Writes the five prepared-format files into ``out_dir`` (created if needed)."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  lines = [
    " ".join(map(str, [user, *items])) for user, items in enumerate(data.sequences, start=1)
  ]
  _write_text(out / "sequences.txt", "\n".join(lines) + "\n")
  _write_json(
    out / "item2attributes.json",
    {str(i): attrs for i, attrs in enumerate(data.item_attributes, start=1)},
  )
  _write_json(
    out / "item_text.json", {str(i): text for i, text in enumerate(data.item_text, start=1)}
  )
  _write_tsv(out / "item_asin.tsv", ("item_id", "asin"), data.item_asins)
  _write_tsv(out / "user_reviewer.tsv", ("user_id", "reviewer_id"), data.user_reviewers)


def prepare_from_raw(
  reviews_path: PathLike, meta_path: PathLike, out_dir: PathLike, *, core: int = 5
) -> dict[str, int]:
  """Reads the raw files, preprocesses them and writes ``out_dir``; returns the stats."""
  reviews = read_reviews(reviews_path)
  metadata = read_metadata(meta_path, keep_asins={asin for _, asin, _ in reviews})
  data = preprocess(reviews, metadata, core=core)
  write_prepared(data, out_dir)
  return dict(data.stats)
