"""The prepared sequence format, read and validated.

A prepared dataset is a folder holding

* ``sequences.txt`` (required): one user a line, ``user_id item_id item_id ...``,
  items in chronological order, ids positive integers (0 is padding);
* ``item2attributes.json`` (optional): ``{"item_id": [attribute_id, ...]}``;
* ``item_text.json`` (optional): ``{"item_id": {"title", "brand", "categories", ...}}``.

When either JSON file is present its keys define the catalogue, which must be exactly
``1..num_items``; otherwise the catalogue is ``1..max item id`` in ``sequences.txt``.
Every problem is reported with the file and line that caused it; users removed by a
rule (``on_short="drop"``) are counted in ``PreparedDataset.filter_log``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from typing import Any

import numpy as np

from s2gr_jax import errors

log = logging.getLogger("s2gr_jax.data")

SEQUENCES = "sequences.txt"
ATTRIBUTES = "item2attributes.json"
ITEM_TEXT = "item_text.json"
OPTIONAL_FILES = (ATTRIBUTES, ITEM_TEXT)

# Leave-one-out needs one training item, the validation target and the test target.
MIN_SEQUENCE_LENGTH = 3


DataError = errors.DataError  # the error every reader here raises (names file and line)

# Ids are stored as int32 (0 is padding).
MAX_ID = 2**31 - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")
# Text fields the tokenizer reads from an item_text.json record, and their JSON types.
_TEXT_FIELDS = ("title", "brand", "description")


@dataclasses.dataclass
class PreparedDataset:
  """A validated dataset held in memory.

  Attributes:
    name: dataset name (e.g. ``beauty``).
    user_ids: int64[num_users], as written in the file.
    sequences: per user, int32[length] item ids in time order.
    num_items: catalogue size; item ids are ``1..num_items``.
    item_attributes: per item (index ``item_id - 1``) its attribute ids, or None.
    item_text: per item (index ``item_id - 1``) its text record, or None.
    filter_log: counts of users/items removed or unused, by rule.
  """

  name: str
  user_ids: np.ndarray
  sequences: list[np.ndarray]
  num_items: int
  item_attributes: list[list[int]] | None = None
  item_text: list[dict[str, Any]] | None = None
  filter_log: dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def num_users(self) -> int:
    return len(self.sequences)

  @property
  def num_interactions(self) -> int:
    return int(sum(len(s) for s in self.sequences))


def fingerprint(folder: str) -> str:
  """md5 over the dataset files present, so a cached build notices changed inputs."""
  h = hashlib.md5()
  for fname in (SEQUENCES,) + OPTIONAL_FILES:
    path = os.path.join(folder, fname)
    if os.path.exists(path):
      h.update(fname.encode())
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          h.update(chunk)
  return h.hexdigest()


def has_prepared_files(folder: str) -> bool:
  return os.path.isfile(os.path.join(folder, SEQUENCES))


def _parse_id(token: str, path: str, lineno: int, what: str) -> int:
  if not _INTEGER.fullmatch(token):
    raise DataError(f"{path}:{lineno}: {what} {token!r:.40} is not an integer")
  if len(token.lstrip("+-0")) > len(str(MAX_ID)):
    raise DataError(f"{path}:{lineno}: {what} {token[:20]}... is too large (ids are "
                    f"int32, at most {MAX_ID})")
  value = int(token)
  if value <= 0:
    raise DataError(f"{path}:{lineno}: {what} {value} must be a positive integer "
                    "(0 is reserved for padding)")
  if value > MAX_ID:
    raise DataError(f"{path}:{lineno}: {what} {value} is too large (ids are int32, at "
                    f"most {MAX_ID})")
  return value


def read_sequences(path: str) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
  """Parses ``sequences.txt``; returns user ids, item sequences and line numbers.

  Lines end with ``\\n`` (a ``\\r`` before it is allowed); blank lines at the end are
  ignored. Anything else that is not ``user_id item_id ...`` with positive int32 ids, one
  line per user, is a ``DataError`` naming the line.
  """
  data = errors.read_file_bytes(path, "dataset file")
  text = errors.decode_utf8(data, path)
  user_ids, sequences, linenos = [], [], []
  seen_users: dict[int, int] = {}
  if text.strip() and not text.endswith("\n"):
    log.warning("%s does not end with a newline: if the file was cut short, its last "
                "user (line %d) is incomplete", path, text.count("\n") + 1)
  lines = text.split("\n")
  while lines and not lines[-1].strip():
    lines.pop()  # blank lines at the end of the file are harmless
  for lineno, line in enumerate(lines, start=1):
    tokens = line.split()
    if not tokens:
      raise DataError(f"{path}:{lineno}: empty line (expected 'user_id item_id ...')")
    user = _parse_id(tokens[0], path, lineno, "user id")
    if user in seen_users:
      raise DataError(f"{path}:{lineno}: user id {user} already appeared on line "
                      f"{seen_users[user]}")
    seen_users[user] = lineno
    if len(tokens) == 1:
      raise DataError(f"{path}:{lineno}: user {user} has an empty item sequence")
    items = [_parse_id(t, path, lineno, "item id") for t in tokens[1:]]
    user_ids.append(user)
    sequences.append(np.asarray(items, dtype=np.int32))
    linenos.append(lineno)
  if not sequences:
    raise DataError(f"{path}: no users (the file is empty)")
  return np.asarray(user_ids, dtype=np.int64), sequences, linenos


def _no_constants(name: str):
  raise ValueError(f"{name} is not a number JSON allows")


def _read_item_json(path: str) -> dict[int, Any]:
  """Reads a ``{"item_id": value}`` JSON file keyed by positive item ids."""
  data = errors.read_file_bytes(path, "dataset file")
  text = errors.decode_utf8(data, path)

  def pairs(items):  # any object of the file: a repeated key is ambiguous
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys):
      seen = set()
      repeated = next(k for k in keys if k in seen or seen.add(k))
      raise ValueError(f"key {repeated!r} appears twice in one object")
    return dict(items)

  try:
    raw = json.loads(text, object_pairs_hook=pairs, parse_constant=_no_constants)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
  except ValueError as e:  # NaN / Infinity, a repeated key
    raise DataError(f"{path}: invalid JSON ({e})") from None
  except RecursionError:
    raise DataError(f"{path}: invalid JSON (nested too deeply)") from None
  if not isinstance(raw, dict):
    raise DataError(f"{path}: expected a JSON object keyed by item id, got a "
                    f"{type(raw).__name__}")
  out = {}
  for key, value in raw.items():
    if (not _INTEGER.fullmatch(key) or len(key.lstrip("+-0")) > len(str(MAX_ID))
        or int(key) > MAX_ID):
      raise DataError(f"{path}: key {key!r:.40} is not an integer item id (1..{MAX_ID})")
    item = int(key)
    if item <= 0:
      raise DataError(f"{path}: item id {item} must be positive (0 is padding)")
    if item in out:
      raise DataError(f"{path}: item id {item} appears twice (as {key!r} and another "
                      "spelling)")
    out[item] = value
  return out


def _attribute_list(value: Any, path: str, item: int) -> list[int]:
  if (not isinstance(value, list)
      or not all(isinstance(a, int) and not isinstance(a, bool) for a in value)):
    raise DataError(f"{path}: item {item}: attributes must be a list of integers, got "
                    f"{value!r:.80}")
  return value


def _text_record(value: Any, path: str, item: int) -> dict[str, Any]:
  """An item_text.json value: an object (its text fields strings or null, categories a
  string or a list of paths) or a bare title string."""
  if isinstance(value, str):
    return {"title": value}
  if not isinstance(value, dict):
    raise DataError(f"{path}: item {item}: expected an object or a title string, got "
                    f"{type(value).__name__} {value!r:.80}")
  for field in _TEXT_FIELDS:
    if value.get(field) is not None and not isinstance(value[field], str):
      raise DataError(f"{path}: item {item}: '{field}' must be a string or null, got "
                      f"{type(value[field]).__name__} {value[field]!r:.80}")
  cats = value.get("categories")
  if cats is not None and not isinstance(cats, str):
    ok = isinstance(cats, list) and all(
        isinstance(p, str) or (isinstance(p, list) and all(isinstance(c, str) for c in p))
        for p in cats)
    if not ok:
      raise DataError(f"{path}: item {item}: 'categories' must be a string or a list of "
                      f"category paths (lists of strings), got {cats!r:.80}")
  return value


def _catalogue_from_keys(path: str, keys: set[int]) -> int:
  if not keys:
    raise DataError(f"{path}: describes no items (an empty object)")
  n = max(keys)
  if len(keys) != n:
    missing = []
    for i in range(1, n + 1):  # the first few gaps, without building 1..n
      if i not in keys:
        missing.append(i)
        if len(missing) == 5:
          break
    raise DataError(f"{path}: item ids must be exactly 1..{n}; missing e.g. {missing}")
  return n


def read_prepared(folder: str, name: str | None = None, *,
                  on_short: str = "error",
                  min_length: int = MIN_SEQUENCE_LENGTH) -> PreparedDataset:
  """Reads and validates a prepared dataset folder.

  Args:
    folder: the folder holding ``sequences.txt`` and the optional JSON files.
    name: dataset name; defaults to the folder's base name.
    on_short: what to do with a user whose sequence is shorter than ``min_length``:
      ``"error"`` (default) stops with the file and line, ``"drop"`` removes the user
      and counts it in ``filter_log["users_too_short"]``.
    min_length: the shortest usable sequence (3 for leave-one-out).
  """
  if on_short not in ("error", "drop"):
    raise ValueError(f"on_short must be 'error' or 'drop', got {on_short!r}")
  if not os.path.isdir(folder):
    raise errors.MissingFileError(f"dataset folder not found: {folder}")
  name = name or os.path.basename(os.path.normpath(folder))
  seq_path = os.path.join(folder, SEQUENCES)
  user_ids, sequences, linenos = read_sequences(seq_path)

  attributes = text = None
  num_items = None
  attr_path, text_path = os.path.join(folder, ATTRIBUTES), os.path.join(folder, ITEM_TEXT)
  for path in (attr_path, text_path):
    if os.path.exists(path):
      table = _read_item_json(path)
      n = _catalogue_from_keys(path, set(table))
      if num_items is not None and n != num_items:
        raise DataError(f"{path}: describes {n} items but {attr_path} describes "
                        f"{num_items}")
      num_items = n
      if path == attr_path:
        attributes = [_attribute_list(table[item], path, item) for item in range(1, n + 1)]
      else:
        text = [_text_record(table[item], path, item) for item in range(1, n + 1)]

  if num_items is None:
    num_items = int(max(int(s.max()) for s in sequences))
  filter_log: dict[str, int] = {}
  keep_users, keep_seqs = [], []
  for user, seq, lineno in zip(user_ids, sequences, linenos):
    bad = seq[seq > num_items]
    if bad.size:
      raise DataError(f"{seq_path}:{lineno}: item id {int(bad[0])} is out of range "
                      f"(catalogue has items 1..{num_items})")
    if len(seq) < min_length:
      if on_short == "error":
        raise DataError(
            f"{seq_path}:{lineno}: user {user} has {len(seq)} items; leave-one-out "
            f"needs at least {min_length} (set data.on_short_sequence='drop' to skip "
            "such users)")
      filter_log["users_too_short"] = filter_log.get("users_too_short", 0) + 1
      continue
    keep_users.append(user)
    keep_seqs.append(seq)
  if not keep_seqs:
    raise DataError(f"{seq_path}: no user has at least {min_length} items")
  used = np.zeros(num_items + 1, bool)
  for seq in keep_seqs:
    used[seq] = True
  filter_log["items_never_interacted"] = int(num_items - used[1:].sum())
  if filter_log["items_never_interacted"] and (attributes is not None or text is not None):
    log.warning("%s: %d of the %d catalogue items (the keys of the item files) appear in "
                "no kept sequence", seq_path, filter_log["items_never_interacted"],
                num_items)
  return PreparedDataset(name=name, user_ids=np.asarray(keep_users, np.int64),
                         sequences=keep_seqs, num_items=num_items,
                         item_attributes=attributes, item_text=text,
                         filter_log=filter_log)
