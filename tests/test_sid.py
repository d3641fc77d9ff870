"""Item vectors, residual k-means, the SID table, de-dup level and prefix index."""

import jax
import ml_collections
import numpy as np
import pytest

from s2gr_jax.sid import diagnostics
from s2gr_jax.sid import embeddings
from s2gr_jax.sid import clustering
from s2gr_jax.sid import quantizers
from s2gr_jax.sid import rqkmeans
from s2gr_jax.sid import table as table_lib


def test_tfidf_svd_shapes_and_similarity():
  bags = [[1, 2], [1, 2], [1, 3], [4, 5], [4, 5, 6], [7]]
  x = embeddings.tfidf_svd(bags, dim=3)
  assert x.shape == (6, 3) and x.dtype == np.float32
  np.testing.assert_allclose(x[0], x[1])  # the same bag, the same vector
  cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
  assert cos(x[0], x[2]) > cos(x[0], x[3])  # sharing attribute 1 beats sharing nothing
  np.testing.assert_array_equal(x, embeddings.tfidf_svd(bags, dim=3))


def test_text_tokens():
  rec = {"title": "OPI Nail Lacquer, 0.5 oz", "brand": "OPI",
         "categories": [["Beauty", "Makeup", "Nails"]]}
  assert embeddings.text_tokens(rec) == sorted(
      ["brand:opi", "cat0:makeup", "cat1:nails", "w:opi", "w:nail", "w:lacquer"])
  assert "cat1:capacitors" in embeddings.text_tokens(
      {"title": "x", "categories": "Industrial & Scientific,Parts,Capacitors"})
  assert embeddings.text_tokens(None) == []


def test_bad_item_matrices(tmp_path):
  with pytest.raises(ValueError, match="3 rows but the catalogue has 4 items"):
    embeddings.validate(np.zeros((3, 2)), 4, "x")
  bad = np.zeros((4, 2))
  bad[2, 1] = np.nan
  with pytest.raises(ValueError, match=r"1 rows hold NaN or infinite values \(first: item 3\)"):
    embeddings.validate(bad, 4, "x")
  with pytest.raises(ValueError, match="must be 2-D"):
    embeddings.validate(np.zeros(4), 4, "x")
  np.save(tmp_path / "e.npy", np.ones((4, 2)))
  assert embeddings.load_npy(str(tmp_path / "e.npy"), 4).shape == (4, 2)
  with pytest.raises(FileNotFoundError, match="item embedding file not found"):
    embeddings.load_npy(str(tmp_path / "nope.npy"), 4)


def test_kmeans_recovers_separated_clusters():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 5)) * 10
  x = np.concatenate([c + rng.normal(size=(30, 5)) * 0.1 for c in centres]).astype(np.float32)
  _, assign, inertia = clustering.kmeans(x, jax.random.key(0), k=4, iters=10)
  assign = np.asarray(assign)
  for g in range(4):
    assert len(set(assign[g * 30:(g + 1) * 30].tolist())) == 1
  assert len(set(assign.tolist())) == 4 and float(inertia) < 0.1


def test_kmeans_restarts_empty_clusters_on_duplicates():
  x = np.repeat(np.eye(3, dtype=np.float32), 5, axis=0)  # 3 distinct points, k = 5
  centres, assign, _ = clustering.kmeans(x, jax.random.key(1), k=5, iters=5)
  assert np.isfinite(np.asarray(centres)).all()
  assert len(set(np.asarray(assign).tolist())) == 3


def test_residual_kmeans_codes():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 8)).astype(np.float32)
  q = rqkmeans.ResidualKMeans(levels=3, codebook_size=8, iters=10, seed=0).fit(x)
  assert q.codes.shape == (200, 3) and q.codebook_sizes == (8, 8, 8)
  assert q.codes.min() >= 0 and q.codes.max() < 8
  mse = q.history["residual_mse"]
  assert mse[0] > mse[1] > mse[2]  # each level explains more of the vector
  with pytest.raises(ValueError, match="5 items are fewer than .*codebook_size=8"):
    rqkmeans.ResidualKMeans(codebook_size=8).fit(x[:5])
  cfg = ml_collections.ConfigDict(dict(kind="nope", levels=3, codebook_size=8,
                                       kmeans_iters=1, seed=0))
  with pytest.raises(ValueError, match="unknown tokenizer.kind 'nope'"):
    quantizers.make_quantizer(cfg)


def test_dedup_level_makes_sids_unique():
  codes = np.array([[0, 1], [0, 1], [2, 2], [0, 1], [2, 2], [1, 0]])
  assert table_lib.dedup_level(codes).tolist() == [0, 1, 0, 2, 1, 0]
  t = table_lib.SidTable.from_semantic_codes(codes, (3, 3))
  assert t.codebook_sizes == (3, 3, 3) and t.semantic_levels == 2
  assert len({tuple(r) for r in t.codes}) == 6
  unique = table_lib.SidTable.from_semantic_codes(np.array([[0, 1], [1, 1]]), (2, 2))
  assert unique.codebook_sizes == (2, 2)  # no collisions: no extra level
  with pytest.raises(ValueError, match="out of range"):
    table_lib.SidTable.from_semantic_codes(np.array([[0, 3]]), (2, 2))


def test_prefix_index_matches_a_dict_trie():
  rng = np.random.default_rng(0)
  t = table_lib.SidTable.from_semantic_codes(rng.integers(0, 4, (60, 3)), (4, 4, 4))
  index = t.prefix_index()
  trie = {}
  for item, row in zip(t.item_ids, t.codes):
    node = trie
    for c in row[:-1]:
      node = node.setdefault(int(c), {})
    node[int(row[-1])] = int(item)

  def walk(node, depth, node_id):
    start = index.child_start[depth][node_id]
    count = index.child_count[depth][node_id]
    codes = index.node_code[depth][start:start + count].tolist()
    assert codes == sorted(node)  # exactly the valid next codes, in order
    for i, c in enumerate(codes):
      if depth + 1 == t.num_levels:
        assert index.leaf_item[start + i] == node[c]
      else:
        walk(node[c], depth + 1, start + i)

  walk(trie, 0, 0)
  assert index.num_nodes[-1] == 60
  assert index.max_children[0] == len(trie)


def test_table_save_load_and_stats(tmp_path):
  codes = np.array([[0, 1], [0, 1], [2, 2], [1, 0]])
  books = [np.arange(8.0).reshape(4, 2), -np.arange(12.0).reshape(4, 3)]
  t = table_lib.SidTable.from_semantic_codes(codes, (4, 4), codebooks=books)
  t.save(str(tmp_path))
  back = table_lib.SidTable.load(str(tmp_path))
  np.testing.assert_array_equal(back.codes, t.codes)
  np.testing.assert_array_equal(back.codebooks[1], books[1])
  assert back.codebook_sizes == t.codebook_sizes and back.semantic_levels == 2
  assert t.lookup()[0].tolist() == [0, 0, 0] and t.lookup()[1].tolist() == t.codes[0].tolist()
  stats = diagnostics.codebook_stats(t)
  assert stats["utilization"] == [0.75, 0.75]
  np.testing.assert_allclose(stats["perplexity"][0], np.exp(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))))
  assert stats["collision_rate"] == 0.5  # items 1 and 2 share (0, 1)
  assert stats["unique_sid_share"] == 0.75 and stats["max_collision_group"] == 2
