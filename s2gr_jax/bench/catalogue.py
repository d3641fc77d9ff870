"""The ``catalogue`` benchmark suite: constrained decoding against catalogue size.

Constrained beam-search latency per user and memory of the jitted decode (arguments +
outputs + temporaries, the trie included) for synthetic catalogues of 10k, 100k and 1M
items with 3 and 4 semantic levels, beams 10/20/50, and the trie's size per depth;
checks the 1M-item figures against the targets (≤ 2 GB, latency ≤ 2× the 10k one)::

    python -m s2gr_jax.bench --suite catalogue --out catalogue.json

The ``sets`` suite does the same for REG4Rec's set-constrained search over parallel,
unordered codebooks (``decoding/sets.py``), compacted and plain::

    python -m s2gr_jax.bench --suite sets --out sets.json
"""

from __future__ import annotations

import json
import statistics
import time

from flax import nnx
import jax
import numpy as np

from s2gr_jax import decoding
from s2gr_jax import models
from s2gr_jax.bench import common
from s2gr_jax.sid import table as table_lib

CATALOGUE_ITEMS = (10_000, 100_000, 1_000_000)
CATALOGUE_LEVELS = (3, 4)  # semantic levels (+ the de-dup level where codes collide)
CATALOGUE_EXTRA_BEAMS = (10, 50)  # besides --beam (the one the targets are read at)
CATALOGUE_BATCH = 32  # users per decode call (--eval-batch is the models suite's)
MEMORY_1M_TARGET_BYTES = 2 * 10**9
LATENCY_RATIO_TARGET = 2.0


def trie_stats(index: table_lib.PrefixIndex) -> dict:
  """Size of the SID trie: nodes and bytes per depth, widest node per depth."""
  depth_bytes = [int(s.nbytes + c.nbytes) for s, c in zip(index.child_start,
                                                          index.child_count)]
  depth_bytes.append(0)
  for d, code in enumerate(index.node_code):  # node_code[d] describes depth d+1 nodes
    depth_bytes[d + 1] += int(code.nbytes)
  depth_bytes[-1] += int(index.leaf_item.nbytes)
  arrays = jax.tree.leaves(decoding.PrefixTrie.from_index(index))
  return {
      "trie_nodes_per_depth": list(index.num_nodes),
      "trie_bytes_per_depth": depth_bytes,
      "trie_bytes": int(sum(a.nbytes for a in arrays)),
      "max_children": list(index.max_children),
  }


def memory_fields(compiled) -> dict:
  """XLA's argument, output and temporary bytes of a compiled call and their sum."""
  mem = compiled.memory_analysis()
  if mem is None:
    return {"memory_bytes": None}
  row = dict(argument_bytes=int(mem.argument_size_in_bytes),
             output_bytes=int(mem.output_size_in_bytes),
             temp_bytes=int(mem.temp_size_in_bytes))
  return dict(row, memory_bytes=sum(row.values()))


def memory_cell(r: dict) -> str:
  if r["memory_bytes"] is None:
    return "n/a"
  return (f"{r['argument_bytes'] / 2**20:.1f}+{r['output_bytes'] / 2**20:.1f}+"
          f"{r['temp_bytes'] / 2**20:.1f} = {r['memory_bytes'] / 2**20:.1f}")


def valid_items(items, n: int) -> bool:
  """Every returned id a catalogue item, no item twice for one user."""
  items = np.asarray(items)
  return bool(((items >= 1) & (items <= n)).all()
              and all(len(set(r)) == len(r) for r in items.tolist()))


def timed_rows(runs, repeats: int) -> list[dict]:
  """Times ``runs`` [(row, fn, times)] round-robin (drift in the machine's load hits
  every configuration alike) and adds the median latency per call and per user."""
  for _ in range(repeats):
    for _, fn, times in runs:
      times.extend(common.time_calls(fn, 1))
  rows = []
  for row, _, times in runs:
    batch_s = statistics.median(times)
    row.update(decode_batch_s=batch_s, decode_times_s=times,
               decode_s_per_user=batch_s / row["users"],
               decode_users_per_s=row["users"] / batch_s)
    rows.append(row)
    print(json.dumps({k: v for k, v in row.items() if k != "decode_times_s"}), flush=True)
  return rows


def target_figures(small: dict, large: dict, **extra) -> dict:
  """The catalogue targets read on the smallest and largest catalogue's rows."""
  ratio = large["decode_s_per_user"] / small["decode_s_per_user"]
  memory = large["memory_bytes"]
  return dict(extra, items_small=small["items"], items_large=large["items"],
              beam=small["beam"], memory_1m_bytes=memory,
              memory_1m_target_bytes=MEMORY_1M_TARGET_BYTES,
              memory_1m_pass=memory is not None and memory <= MEMORY_1M_TARGET_BYTES,
              latency_ratio_1m_over_10k=ratio, latency_ratio_target=LATENCY_RATIO_TARGET,
              latency_ratio_pass=ratio <= LATENCY_RATIO_TARGET)


def target_lines(t: dict, note: str) -> list[str]:
  mem = "n/a" if t["memory_1m_bytes"] is None else f"{t['memory_1m_bytes'] / 2**20:.1f} MB"
  return [
      f"| memory_1m_bytes ({t['items_large']:,} items, beam {t['beam']}{note}) | {mem} "
      f"| ≤ {t['memory_1m_target_bytes'] / 1e9:.0f} GB | "
      f"{'pass' if t['memory_1m_pass'] else 'FAIL'} |",
      f"| latency_ratio_1m_over_10k ({t['items_large']:,} / {t['items_small']:,} items, "
      f"beam {t['beam']}{note}) | {t['latency_ratio_1m_over_10k']:.3f} | "
      f"≤ {t['latency_ratio_target']:g} | "
      f"{'pass' if t['latency_ratio_pass'] else 'FAIL'} |"]


def suite_catalogue(args) -> dict:
  """Constrained beam search over synthetic catalogues of growing size.

  For each catalogue (random codes, ``levels`` × 256 plus the de-dup level where codes
  collide) and beam width: the trie's size, the static candidate widths, the compiled
  decode's memory (XLA's arguments + outputs + temporaries) and its latency per user.
  Timing is round-robin over all configurations, so that drift in the machine's load
  hits every catalogue alike. Optional ``args`` fields (tests, other sizes):
  ``catalogue_items``, ``catalogue_levels``, ``catalogue_beams``, ``catalogue_batch``,
  ``model_overrides`` (a dict applied to ``base_config().model.tiger``).
  """
  sizes = tuple(getattr(args, "catalogue_items", None) or CATALOGUE_ITEMS)
  level_variants = tuple(getattr(args, "catalogue_levels", None) or CATALOGUE_LEVELS)
  beams = tuple(getattr(args, "catalogue_beams", None)
                or (args.beam,) + tuple(b for b in CATALOGUE_EXTRA_BEAMS if b != args.beam))
  users = int(getattr(args, "catalogue_batch", None) or CATALOGUE_BATCH)
  model_cfg = common.model_config("tiger", dtype=getattr(args, "dtype", "float32"),
                                  kernels=getattr(args, "kernels", "auto"),
                                  **(getattr(args, "model_overrides", None) or {}))
  runs = []
  for levels in level_variants:
    for n in sizes:
      t0 = time.perf_counter()
      table = common.synthetic_table(n, levels=levels)
      index = table.prefix_index()
      build_s = time.perf_counter() - t0
      stats = trie_stats(index)
      make = models.build(model_cfg, table, user_buckets=2000, max_history=args.history)
      graphdef, params = nnx.split(make(nnx.Rngs(0)))
      trie = jax.device_put(decoding.PrefixTrie.from_index(index))
      batch = jax.device_put(common.synthetic_batch(table, users, args.history, seed=1))
      for beam in beams:
        def search(params, batch, trie, beam=beam, graphdef=graphdef):
          model = nnx.merge(graphdef, params)
          return decoding.beam_search(model, batch, trie, beam=beam)
        t0 = time.perf_counter()
        compiled = jax.jit(search).lower(params, batch, trie).compile()
        compile_s = time.perf_counter() - t0
        row = dict(items=n, semantic_levels=levels, levels=table.num_levels,
                   codebook_sizes=list(table.codebook_sizes), beam=beam, users=users,
                   history=args.history, trie_build_s=build_s, **stats,
                   trie_bytes_per_item=stats["trie_bytes"] / n,
                   candidates_per_level=[(1 if d == 0 else beam) * w
                                         for d, w in enumerate(index.max_children)],
                   compile_s=compile_s, **memory_fields(compiled))
        items, _ = compiled(params, batch, trie)  # warm-up; also a sanity check
        row["valid_items"] = valid_items(items, n)
        runs.append((row, lambda c=compiled, p=params, b=batch, t=trie: c(p, b, t), []))
        print(f"catalogue {n:,} items, {levels} levels, beam {beam}: compiled in "
              f"{compile_s:.1f} s; trie {stats['trie_bytes'] / 2**20:.1f} MB, "
              f"max_children {stats['max_children']}", flush=True)
  rows = timed_rows(runs, args.repeats)

  def figures(levels):
    def pick(n):
      return next(r for r in rows if r["items"] == n and r["beam"] == beams[0]
                  and r["semantic_levels"] == levels)
    small, large = pick(min(sizes)), pick(max(sizes))
    return target_figures(small, large, semantic_levels=levels,
                          trie_bytes_per_item_small=small["trie_bytes_per_item"],
                          trie_bytes_per_item_large=large["trie_bytes_per_item"])
  # The targets are read on the first variant (3 semantic levels); the others are shown.
  targets = figures(level_variants[0])
  targets["variants"] = [figures(levels) for levels in level_variants]
  return {"catalogue": rows, "targets": targets}


def markdown(result: dict) -> str:
  lines = [f"device: {result.get('device', '?')}, {result.get('date', '')}", "",
           "| items | codes per level | beam | trie nodes per depth | trie (MB) | max children "
           "| decode (ms/user) | users/s | compile (s) | memory arg+out+temp (MB) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in result["catalogue"]:
    mem = memory_cell(r)
    lines.append(
        f"| {r['items']:,} | {'+'.join(map(str, r['codebook_sizes']))} | {r['beam']} | "
        f"{' / '.join(f'{x:,}' for x in r['trie_nodes_per_depth'])} | "
        f"{r['trie_bytes'] / 2**20:.2f} | {' / '.join(map(str, r['max_children']))} | "
        f"{r['decode_s_per_user'] * 1e3:.2f} | {r['decode_users_per_s']:.1f} | "
        f"{r['compile_s']:.1f} | {mem} |")
  lines += ["", "| target | value | limit | pass |", "|---|---|---|---|"]
  for i, t in enumerate(result["targets"].get("variants") or [result["targets"]]):
    note = ("" if i == 0 else
            f", {t['semantic_levels']} semantic levels: shown, not the target")
    lines += target_lines(t, note)
  return "\n".join(lines)


SETS_ITEMS = CATALOGUE_ITEMS
SETS_CODEBOOKS = 4  # REG4Rec's M parallel codebooks of 256 codes


def index_bytes(index) -> int:
  """Bytes of the set-constrained search's catalogue arrays (``decoding.CodeSets``)."""
  return int(sum(a.nbytes for a in jax.tree.leaves(index)))


def suite_sets(args) -> dict:
  """REG4Rec's set-constrained CRSS search over synthetic catalogues of growing size.

  For each catalogue (random codes over ``SETS_CODEBOOKS`` parallel codebooks of 256,
  the de-dup level where all M collide) the compacted search (``CodeSets.compact``,
  the default) and the plain one: the index's bytes (per item: linear memory means a
  flat figure), the posting and pair widths, the compiled decode's memory and its
  latency per user. The targets are read on the compacted search at ``--beam``:
  compiled memory at the largest catalogue ≤ 2 GB and latency ≤ 2× the smallest's.
  Optional ``args`` fields: ``catalogue_items``, ``catalogue_batch``,
  ``model_overrides`` (applied to ``base_config().model.reg4rec``), ``sets_plain``
  (False skips the plain search).
  """
  from s2gr_jax.decoding import sets  # pylint: disable=g-import-not-at-top
  sizes = tuple(getattr(args, "catalogue_items", None) or SETS_ITEMS)
  users = int(getattr(args, "catalogue_batch", None) or CATALOGUE_BATCH)
  variants = (True, False) if getattr(args, "sets_plain", True) else (True,)
  model_cfg = common.model_config("reg4rec", dtype=getattr(args, "dtype", "float32"),
                                  kernels=getattr(args, "kernels", "auto"),
                                  **(getattr(args, "model_overrides", None) or {}))
  runs = []
  for n in sizes:
    table = common.synthetic_table(n, levels=SETS_CODEBOOKS, ordered=False)
    make = models.build(model_cfg, table, user_buckets=2000, max_history=args.history)
    graphdef, params = nnx.split(make(nnx.Rngs(0)))
    batch = jax.device_put(common.synthetic_batch(table, users, args.history, seed=1))
    for compact in variants:
      t0 = time.perf_counter()
      index = sets.CodeSets.from_table(table, compact=compact)
      build_s = time.perf_counter() - t0
      index = jax.device_put(index)

      def search(params, batch, index, graphdef=graphdef):
        model = nnx.merge(graphdef, params)
        return sets.crss_search(model, batch, index, beam=args.beam)
      t0 = time.perf_counter()
      compiled = jax.jit(search).lower(params, batch, index).compile()
      compile_s = time.perf_counter() - t0
      size = index_bytes(index)
      row = dict(items=n, codebooks=SETS_CODEBOOKS, levels=table.num_levels,
                 codebook_sizes=list(table.codebook_sizes), compact=compact,
                 beam=args.beam, users=users, history=args.history, index_build_s=build_s,
                 index_bytes=size, index_bytes_per_item=size / n,
                 posting_width=int(index.posting.shape[1]), pair_width=index.pair_width,
                 compile_s=compile_s, **memory_fields(compiled))
      items, _ = compiled(params, batch, index)
      row["valid_items"] = valid_items(items, n)
      runs.append((row, lambda c=compiled, p=params, b=batch, i=index: c(p, b, i), []))
      print(f"sets {n:,} items, compact={compact}: compiled in {compile_s:.1f} s; index "
            f"{size / 2**20:.1f} MB, posting width {row['posting_width']}, pair width "
            f"{row['pair_width']}", flush=True)
  rows = timed_rows(runs, args.repeats)

  def figures(compact):
    pick = lambda n: next(r for r in rows if r["items"] == n and r["compact"] == compact)
    small, large = pick(min(sizes)), pick(max(sizes))
    return target_figures(small, large, compact=compact,
                          index_bytes_per_item_small=small["index_bytes_per_item"],
                          index_bytes_per_item_large=large["index_bytes_per_item"])
  targets = figures(True)
  targets["variants"] = [figures(c) for c in variants]
  return {"sets": rows, "targets": targets}


def markdown_sets(result: dict) -> str:
  lines = [f"device: {result.get('device', '?')}, {result.get('date', '')}", "",
           "| items | codebooks | search | beam | index (MB) | bytes / item | posting / pair "
           "width | decode (ms/user) | users/s | compile (s) | memory arg+out+temp (MB) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in result["sets"]:
    mem = memory_cell(r)
    lines.append(
        f"| {r['items']:,} | {'+'.join(map(str, r['codebook_sizes']))} | "
        f"{'compacted' if r['compact'] else 'plain'} | {r['beam']} | "
        f"{r['index_bytes'] / 2**20:.2f} | {r['index_bytes_per_item']:.0f} | "
        f"{r['posting_width']} / {r['pair_width']} | {r['decode_s_per_user'] * 1e3:.2f} | "
        f"{r['decode_users_per_s']:.1f} | {r['compile_s']:.1f} | {mem} |")
  lines += ["", "| target | value | limit | pass |", "|---|---|---|---|"]
  for t in result["targets"]["variants"]:
    lines += target_lines(t, ", compacted" if t["compact"]
                          else ", plain: shown, not the target")
  return "\n".join(lines)
