"""The ``catalogue`` bench suite: trie size linear in items, decoding figures per catalogue."""

import types

import numpy as np

from s2gr_jax.bench import catalogue
from s2gr_jax.bench import common


def test_trie_bytes_linear_in_items_never_in_codes_to_the_levels():
  per_item, levels = {}, set()
  for n in (8_000, 32_000):  # both with a de-dup level (4 levels)
    table = common.synthetic_table(n)
    stats = catalogue.trie_stats(table.prefix_index())
    nodes = stats["trie_nodes_per_depth"]
    # child_start + child_count per inner node, node_code per non-root node, leaf_item.
    assert stats["trie_bytes"] == 4 * (2 * sum(nodes[:-1]) + sum(nodes[1:]) + nodes[-1])
    assert sum(stats["trie_bytes_per_depth"]) == stats["trie_bytes"]
    assert nodes[-1] == n and sum(nodes) <= 1 + table.num_levels * n
    assert stats["max_children"][0] <= 256 and max(stats["max_children"]) <= 256
    per_item[n] = stats["trie_bytes"] / n
    levels.add(table.num_levels)
  assert levels == {4}
  # 4x the items, ~4x the bytes (upper levels saturate at 256 nodes, so a bit less).
  assert abs(per_item[32_000] / per_item[8_000] - 1) < 0.15, per_item
  # 4 levels of 4,096 codes (2.8e14 possible SIDs): the same items cost the same bytes.
  wide = common.synthetic_table(4_000, levels=4, codebook=4_096)
  wide_stats = catalogue.trie_stats(wide.prefix_index())
  assert wide.num_levels == 4  # no two items share all codes: no de-dup level
  assert wide_stats["trie_bytes"] <= 4 * (11 * 4_000 + 2)  # ≤ 1 + 4n nodes
  assert wide_stats["max_children"][-1] == 1


def test_suite_runs_on_tiny_catalogues_and_reports_targets():
  args = types.SimpleNamespace(
      beam=4, history=3, repeats=1, catalogue_items=(200, 2_000), catalogue_levels=(3,),
      catalogue_beams=(4,), catalogue_batch=2,
      model_overrides=dict(d_model=32, num_heads=2, head_dim=16, d_ff=64,
                           encoder_layers=1, decoder_layers=1))
  result = catalogue.suite_catalogue(args)
  rows = result["catalogue"]
  assert [r["items"] for r in rows] == [200, 2_000]
  for r in rows:
    assert r["valid_items"]  # distinct catalogue items for every user
    assert r["trie_nodes_per_depth"][-1] == r["items"]
    assert len(r["max_children"]) == r["levels"] == len(r["codebook_sizes"])
    assert r["argument_bytes"] >= r["trie_bytes"] > 0  # the trie is an argument
    assert r["memory_bytes"] == r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"]
    assert r["decode_s_per_user"] > 0 and len(r["decode_times_s"]) == 1
    np.testing.assert_allclose(r["decode_users_per_s"] * r["decode_s_per_user"], 1.0)
  t = result["targets"]
  assert (t["items_small"], t["items_large"]) == (200, 2_000)
  assert t["memory_1m_bytes"] == rows[1]["memory_bytes"]
  assert t["memory_1m_pass"] is (t["memory_1m_bytes"] <= 2e9)
  np.testing.assert_allclose(t["latency_ratio_1m_over_10k"],
                             rows[1]["decode_s_per_user"] / rows[0]["decode_s_per_user"])
  assert t["latency_ratio_pass"] is bool(t["latency_ratio_1m_over_10k"] <= 2)
  assert [v["semantic_levels"] for v in t["variants"]] == [3]
  md = catalogue.markdown(dict(result, device="cpu", date="now"))
  assert "| 2,000 | 256+256+256" in md
  assert "memory_1m_bytes" in md and "latency_ratio_1m_over_10k" in md


def test_sets_suite_compares_the_compacted_and_plain_searches():
  args = types.SimpleNamespace(
      beam=4, history=3, repeats=1, catalogue_items=(300, 3_000), catalogue_batch=2,
      model_overrides=dict(d_model=32, num_heads=2, head_dim=16, d_ff=64,
                           encoder_layers=1, decoder_layers=1))
  result = catalogue.suite_sets(args)
  rows = result["sets"]
  assert [(r["items"], r["compact"]) for r in rows] == [
      (300, True), (300, False), (3_000, True), (3_000, False)]
  for r in rows:
    assert r["valid_items"]
    assert r["pair_width"] <= r["posting_width"]
    assert r["memory_bytes"] == r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"]
  big = rows[2]
  assert big["posting_width"] > 3_000 / 256  # about N / 256 items carry a token
  t = result["targets"]
  assert t["compact"] and [v["compact"] for v in t["variants"]] == [True, False]
  np.testing.assert_allclose(t["latency_ratio_1m_over_10k"],
                             rows[2]["decode_s_per_user"] / rows[0]["decode_s_per_user"])
  md = catalogue.markdown_sets(dict(result, device="cpu", date="now"))
  assert "| 3,000 | 256+256+256+256" in md and "compacted" in md and "plain" in md
