"""Benchmark suites: figures measured in one process, reported as JSON and Markdown.

``scaling``: the train step and the beam search over mesh shapes (data / fsdp / tensor
splits of the available devices) and model sizes, with step time, examples/s,
tokens/s, compile time, XLA's FLOPs per step and device and its memory estimate per
device (arguments + outputs + temporaries of the compiled step), plus a PNG of
examples/s. On CPU with simulated devices it checks that every layout compiles and runs
and what the partitioning costs; on accelerators it measures scaling. ``scaling`` and
``models`` give each row's ``mfu``: FLOP/s per device over the device's data-sheet dense
bf16 peak (``DEVICE_BF16_PEAKS``: H100, H200, A100, L4, TPU v2-v6e) or ``--peak-flops``.
On one GPU, the MFU figures of issue #5::

    python -m s2gr_jax.bench --suite scaling --sizes paper,medium,large --dtype bfloat16 \
        --out scaling_gpu.json

``models``: the cost of S²GR's thoughts. TIGER and S²GR (same backbone, same SID
table: 3×256 codes + a de-dup level) run the jitted train step and the constrained
beam search on the same synthetic batches; the suite reports step time, examples/s,
users/s, compile time and XLA's FLOP count per step, and the ratios S²GR / TIGER
(SPEC: training ≤ 1.35×, decoding ≤ 1.2×).

``catalogue``: constrained beam-search latency per user and memory of the jitted decode
(arguments + outputs + temporaries, the trie included) for synthetic catalogues of 10k,
100k and 1M items with 3 and 4 semantic levels, beams 10/20/50, and the trie's size per
depth; checks the 1M-item figures against the targets (≤ 2 GB, latency ≤ 2× the 10k one).

``peer``: our TIGER against the PyTorch reference, cornac 3.0.1's ``TIGER``, on the same
machine in one run: same model size (``--sizes``, default paper: d_model 128, 4+4 layers,
6 heads × 64, MLP 1024, dropout 0.1), same batch, history length and beam, same synthetic
catalogue (``--items`` items, 3×256 codes). cornac runs in a SUBPROCESS
(``cornac_peer.py``) under ``--peer-python``, with torch limited to as many threads as
there are cores (XLA's CPU pool uses them all); torch and cornac are never imported here.
Its environment (ignored by git)::

    python3 -m venv .venv-peer
    .venv-peer/bin/pip install torch==2.13.0 transformers cornac==3.0.1

    python -m s2gr_jax.bench --suite peer --out peer.json --peer-python .venv-peer/bin/python

It reports ``train_speedup_vs_cornac`` (examples/s over examples/s),
``decode_speedup_vs_cornac`` (users/s over users/s: ours batched ``--eval-batch`` users,
cornac one user at a time, as its ranking does; the batch-1 ratio is given too),
``train_flops_fraction_of_peak`` (XLA's FLOPs per step / step time, over
``machine_peak_flops_per_s``: a jitted float32 ``--peak-n``² matmul timed in the same run)
and the raw figures of both sides. Run it on a quiet machine: the load average is
recorded and a busy start is flagged (``machine_busy_at_start``), because torch's
OpenMP threads slow down many times over when another process holds a core.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from s2gr_jax import config_lib
from s2gr_jax import decoding
from s2gr_jax import models
from s2gr_jax import parallel
from s2gr_jax import train as train_lib
from s2gr_jax.bench import cornac_peer
from s2gr_jax.sid import table as table_lib


def synthetic_table(num_items: int, levels: int = 3, codebook: int = 256, dim: int = 32,
                    seed: int = 0) -> table_lib.SidTable:
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, codebook, (num_items, levels))
  books = [rng.normal(size=(codebook, dim)).astype(np.float32) for _ in range(levels)]
  return table_lib.SidTable.from_semantic_codes(codes, (codebook,) * levels,
                                                codebooks=books)


def synthetic_batch(table: table_lib.SidTable, batch: int, history: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  lookup = table.lookup()
  items = rng.integers(1, table.num_items + 1, (batch, history)).astype(np.int32)
  target = rng.integers(1, table.num_items + 1, batch).astype(np.int32)
  return dict(history_items=items, history_codes=lookup[items],
              history_mask=np.ones((batch, history), bool),
              user_bucket=rng.integers(0, 2000, batch).astype(np.int32),
              target_item=target, target_codes=lookup[target],
              weight=np.ones(batch, np.float32))


# Dense bfloat16 matmul peak of one JAX device (FLOP/s), from the vendors' data sheets.
# The first name found in ``device_kind`` wins (so the PCIe and NVL H100s come before
# the SXM one, TPU v5e's "TPU v5 lite" before v5p's "TPU v5"); TPU v2 and v3 show each
# core as a device, later TPUs each chip.
DEVICE_BF16_PEAKS = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
    ("A100", 312e12), ("L4", 121e12),
    ("TPU v2", 22.5e12), ("TPU v3", 61.5e12), ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v6 lite", 918e12),
)


def device_bf16_peak(device_kind: str) -> float | None:
  """The data-sheet dense bf16 peak of a device kind, or None (CPUs, unlisted devices)."""
  for name, peak in DEVICE_BF16_PEAKS:
    if name in device_kind:
      return peak
  return None


def add_mfu(rows: list[dict], peak: float | None) -> None:
  """``mfu`` of each row: its train step's FLOP/s per device (XLA's count of the
  partitioned step, so already per device) over ``peak``; None without a peak."""
  for r in rows:
    rate = r.get("train_flops_per_s")
    r["mfu"] = rate / peak if (rate and peak) else None


def _peak_for(args) -> dict:
  kind = jax.devices()[0].device_kind
  if getattr(args, "peak_flops", 0):
    return {"flops_per_s": args.peak_flops, "source": "--peak-flops", "device_kind": kind}
  return {"flops_per_s": device_bf16_peak(kind), "device_kind": kind,
          "source": "data sheet, dense bf16 per device (MFU of float32 runs is against "
                    "it too)"}


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else None


def _time(fn, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return times


def measure_model(model_cfg, table, *, batch: int, history: int, eval_batch: int,
                  beam: int, repeats: int, mesh_cfg=None,
                  extra_decode_batches: tuple[int, ...] = ()) -> dict:
  """Train-step and beam-search figures of one model on one mesh (default: 1 device).

  ``extra_decode_batches``: further decode batch sizes to time (e.g. ``(1,)`` for the
  latency of one user), reported under ``decode_by_batch``.
  """
  config = config_lib.base_config()
  if mesh_cfg is None:
    mesh_cfg = config.mesh.copy_and_resolve_references()
    mesh_cfg.data = 1
  mesh = parallel.make_mesh(mesh_cfg)
  make = models.model_factory(model_cfg, table, user_buckets=2000, max_history=history)
  graphdef, model_graphdef, state = train_lib.create_state(
      make, train_lib.make_optimizer(config.train), 0, mesh)
  train_step = train_lib.make_train_step(graphdef, train_lib.make_schedule(config.train))
  tb = parallel.shard_batch(synthetic_batch(table, batch, history), mesh)
  key = jax.random.key(0)
  t0 = time.perf_counter()
  compiled = train_step.lower(state, tb, key).compile()
  compile_train = time.perf_counter() - t0
  flops = _flops(compiled)
  mem = compiled.memory_analysis()
  memory = (None if mem is None else int(mem.argument_size_in_bytes
                                          + mem.output_size_in_bytes
                                          + mem.temp_size_in_bytes))
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = train_step(holder["state"], tb, key)
    return metrics

  jax.block_until_ready(one_step())  # warm-up
  train_times = _time(one_step, repeats)

  index = table.prefix_index()
  trie = jax.device_put(decoding.index_arrays(index), parallel.replicated(mesh))
  eb = parallel.shard_batch(synthetic_batch(table, eval_batch, history, seed=1), mesh)

  @jax.jit
  def search(model_state, b, trie):
    from flax import nnx  # pylint: disable=g-import-not-at-top
    model = nnx.merge(model_graphdef, model_state)
    return decoding.recommend(model, b, trie, beam=beam, max_children=index.max_children)

  t0 = time.perf_counter()
  search.lower(holder["state"][0], eb, trie).compile()
  compile_decode = time.perf_counter() - t0
  jax.block_until_ready(search(holder["state"][0], eb, trie))
  decode_times = _time(lambda: search(holder["state"][0], eb, trie), repeats)
  by_batch = {}
  for b in extra_decode_batches:
    xb = parallel.shard_batch(synthetic_batch(table, b, history, seed=2), mesh)
    t0 = time.perf_counter()
    search.lower(holder["state"][0], xb, trie).compile()
    compile_b = time.perf_counter() - t0
    jax.block_until_ready(search(holder["state"][0], xb, trie))
    times_b = _time(lambda xb=xb: search(holder["state"][0], xb, trie), repeats)
    med = statistics.median(times_b)
    by_batch[str(b)] = {"decode_batch_s": med, "decode_users_per_s": b / med,
                        "decode_batch_times_s": times_b, "compile_decode_s": compile_b}
  step_s = statistics.median(train_times)
  decode_s = statistics.median(decode_times)
  extra = {"decode_by_batch": by_batch} if by_batch else {}
  return {
      "params": train_lib.param_count(holder["state"]),
      "mesh": dict(mesh.shape), "train_memory_bytes_per_device": memory,
      "train_step_s": step_s, "train_examples_per_s": batch / step_s,
      "train_tokens_per_s": batch * (1 + history * table.num_levels) / step_s,
      "train_flops_per_step": flops,
      "train_flops_per_s": flops / step_s if flops else None,
      "compile_train_s": compile_train,
      "decode_batch_s": decode_s, "decode_users_per_s": eval_batch / decode_s,
      "compile_decode_s": compile_decode,
      "train_step_times_s": train_times, "decode_batch_times_s": decode_times, **extra,
  }


def suite_models(args) -> dict:
  table = synthetic_table(args.items)
  base = config_lib.base_config().model
  peak = _peak_for(args)
  out = {}
  for name in ("tiger", "s2gr"):
    cfg = base.copy_and_resolve_references()
    cfg.name = name
    cfg.dtype = getattr(args, "dtype", "float32")
    out[name] = measure_model(cfg, table, batch=args.batch, history=args.history,
                              eval_batch=args.eval_batch, beam=args.beam,
                              repeats=args.repeats)
    add_mfu([out[name]], peak["flops_per_s"])
    print(f"{name}: {json.dumps(out[name])}", flush=True)
  return {
      "device_peak": peak,
      "models": out,
      "ratios": {
          "s2gr_over_tiger_train_step": (out["s2gr"]["train_step_s"]
                                         / out["tiger"]["train_step_s"]),
          "s2gr_over_tiger_decode": (out["s2gr"]["decode_batch_s"]
                                     / out["tiger"]["decode_batch_s"]),
      },
  }


MODEL_SIZES = {
    "paper": dict(d_model=128, num_heads=6, head_dim=64, d_ff=1024, encoder_layers=4,
                  decoder_layers=4),
    "medium": dict(d_model=512, num_heads=8, head_dim=64, d_ff=2048, encoder_layers=6,
                   decoder_layers=6),
    "large": dict(d_model=1024, num_heads=16, head_dim=64, d_ff=4096, encoder_layers=12,
                  decoder_layers=12),
    "tiny": dict(d_model=32, num_heads=2, head_dim=16, d_ff=64, encoder_layers=1,
                 decoder_layers=1),  # smoke tests
}


def mesh_layouts(n: int) -> list[dict]:
  """Data-parallel over 1, 2, 4, ... devices, then the splits of all n devices."""
  layouts, d = [], 1
  while d <= n:
    layouts.append(dict(data=d, fsdp=1, tensor=1))
    d *= 2
  if n >= 4:
    layouts += [dict(data=n // 2, fsdp=2, tensor=1), dict(data=n // 2, fsdp=1, tensor=2)]
  if n >= 8:
    layouts.append(dict(data=n // 4, fsdp=2, tensor=2))
  return layouts


def _layouts(args) -> list[dict]:
  """``--meshes`` (e.g. ``1x1x1,8x1x1``: data×fsdp×tensor), else ``mesh_layouts``."""
  if not getattr(args, "meshes", ""):
    return mesh_layouts(jax.device_count())
  layouts = []
  for spec in args.meshes.split(","):
    try:
      data, fsdp, tensor = (int(n) for n in spec.lower().split("x"))
    except ValueError:
      raise SystemExit(f"--meshes: {spec!r} is not DATAxFSDPxTENSOR, e.g. 4x2x1") from None
    if data * fsdp * tensor > jax.device_count():
      raise SystemExit(f"--meshes: {spec} needs {data * fsdp * tensor} devices, "
                       f"{jax.device_count()} available")
    layouts.append(dict(data=data, fsdp=fsdp, tensor=tensor))
  return layouts


def suite_scaling(args) -> dict:
  import ml_collections  # pylint: disable=g-import-not-at-top
  layouts = _layouts(args)
  table = synthetic_table(args.items)
  peak = _peak_for(args)
  rows = []
  for size in args.sizes.split(","):
    model_cfg = config_lib.base_config().model
    model_cfg.update(MODEL_SIZES[size])
    model_cfg.dtype = getattr(args, "dtype", "float32")
    for layout in layouts:
      mesh_cfg = ml_collections.ConfigDict(dict(layout, rules=()))
      batch = max(args.batch, layout["data"] * layout["fsdp"])
      m = measure_model(model_cfg, table, batch=batch, history=args.history,
                        eval_batch=max(args.eval_batch, layout["data"] * layout["fsdp"]),
                        beam=args.beam, repeats=args.repeats, mesh_cfg=mesh_cfg)
      m.update(size=size, layout=layout, batch=batch)
      add_mfu([m], peak["flops_per_s"])
      print(json.dumps(m), flush=True)
      rows.append(m)
  if args.plot:
    _plot_scaling(rows, args.out.rsplit(".", 1)[0] + ".png")
  return {"rows": rows, "device_peak": peak}


def _plot_scaling(rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(8, 3.6))
  sizes = sorted({r["size"] for r in rows}, key=list(MODEL_SIZES).index)
  labels = [f"{r['layout']['data']}×{r['layout']['fsdp']}×{r['layout']['tensor']}"
            for r in rows if r["size"] == sizes[0]]
  x = np.arange(len(labels))
  width = 0.8 / len(sizes)
  for i, size in enumerate(sizes):
    vals = [r["train_examples_per_s"] for r in rows if r["size"] == size]
    ax.bar(x + i * width, vals, width, label=size)
  ax.set_xticks(x + width * (len(sizes) - 1) / 2, labels)
  ax.set_xlabel("mesh data × fsdp × tensor")
  ax.set_ylabel("train examples/s")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# --- catalogue: constrained decoding vs catalogue size -------------------------------

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
  arrays = jax.tree.leaves(decoding.index_arrays(index))
  return {
      "trie_nodes_per_depth": list(index.num_nodes),
      "trie_bytes_per_depth": depth_bytes,
      "trie_bytes": int(sum(a.nbytes for a in arrays)),
      "max_children": list(index.max_children),
  }


def suite_catalogue(args) -> dict:
  """Constrained beam search over synthetic catalogues of growing size.

  For each catalogue (random codes, ``levels`` × 256 plus the de-dup level where codes
  collide) and beam width: the trie's size, the static candidate widths, the compiled
  decode's memory (XLA's arguments + outputs + temporaries) and its latency per user.
  Timing is round-robin over all configurations, so that drift in the machine's load
  hits every catalogue alike. Optional ``args`` fields (tests, other sizes):
  ``catalogue_items``, ``catalogue_levels``, ``catalogue_beams``, ``catalogue_batch``,
  ``model_overrides`` (a dict applied to ``base_config().model``).
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  sizes = tuple(getattr(args, "catalogue_items", None) or CATALOGUE_ITEMS)
  level_variants = tuple(getattr(args, "catalogue_levels", None) or CATALOGUE_LEVELS)
  beams = tuple(getattr(args, "catalogue_beams", None)
                or (args.beam,) + tuple(b for b in CATALOGUE_EXTRA_BEAMS if b != args.beam))
  users = int(getattr(args, "catalogue_batch", None) or CATALOGUE_BATCH)
  model_cfg = config_lib.base_config().model
  model_cfg.name = "tiger"
  model_cfg.dtype = getattr(args, "dtype", "float32")
  model_cfg.update(getattr(args, "model_overrides", None) or {})
  runs = []
  for levels in level_variants:
    for n in sizes:
      t0 = time.perf_counter()
      table = synthetic_table(n, levels=levels)
      index = table.prefix_index()
      build_s = time.perf_counter() - t0
      stats = trie_stats(index)
      make = models.model_factory(model_cfg, table, user_buckets=2000,
                                  max_history=args.history)
      graphdef, params = nnx.split(make(nnx.Rngs(0)))
      trie = jax.device_put(decoding.index_arrays(index))
      batch = jax.device_put(synthetic_batch(table, users, args.history, seed=1))
      for beam in beams:
        def search(params, batch, trie, beam=beam, graphdef=graphdef,
                   widths=index.max_children):
          model = nnx.merge(graphdef, params)
          return decoding.beam_search(model, batch, trie, beam=beam, max_children=widths)
        t0 = time.perf_counter()
        compiled = jax.jit(search).lower(params, batch, trie).compile()
        compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        row = dict(items=n, semantic_levels=levels, levels=table.num_levels,
                   codebook_sizes=list(table.codebook_sizes), beam=beam, users=users,
                   history=args.history, trie_build_s=build_s, **stats,
                   trie_bytes_per_item=stats["trie_bytes"] / n,
                   candidates_per_level=[(1 if d == 0 else beam) * w
                                         for d, w in enumerate(index.max_children)],
                   compile_s=compile_s)
        if mem is not None:
          row.update(argument_bytes=int(mem.argument_size_in_bytes),
                     output_bytes=int(mem.output_size_in_bytes),
                     temp_bytes=int(mem.temp_size_in_bytes))
          row["memory_bytes"] = (row["argument_bytes"] + row["output_bytes"]
                                 + row["temp_bytes"])
        else:
          row["memory_bytes"] = None
        items, _ = compiled(params, batch, trie)  # warm-up; also a sanity check
        items = np.asarray(items)
        row["valid_items"] = bool(((items >= 1) & (items <= n)).all()
                                  and all(len(set(r)) == len(r) for r in items.tolist()))
        runs.append((row, lambda c=compiled, p=params, b=batch, t=trie: c(p, b, t), []))
        print(f"catalogue {n:,} items, {levels} levels, beam {beam}: compiled in "
              f"{compile_s:.1f} s; trie {stats['trie_bytes'] / 2**20:.1f} MB, "
              f"max_children {stats['max_children']}", flush=True)
  for _ in range(args.repeats):
    for _, fn, times in runs:
      times.extend(_time(fn, 1))
  rows = []
  for row, _, times in runs:
    batch_s = statistics.median(times)
    row.update(decode_batch_s=batch_s, decode_times_s=times,
               decode_s_per_user=batch_s / row["users"],
               decode_users_per_s=row["users"] / batch_s)
    rows.append(row)
    print(json.dumps({k: v for k, v in row.items() if k != "decode_times_s"}), flush=True)

  def figures(levels):
    def pick(n):
      return next(r for r in rows if r["items"] == n and r["beam"] == beams[0]
                  and r["semantic_levels"] == levels)
    small, large = pick(min(sizes)), pick(max(sizes))
    ratio = large["decode_s_per_user"] / small["decode_s_per_user"]
    memory = large["memory_bytes"]
    return {
        "semantic_levels": levels, "items_small": small["items"],
        "items_large": large["items"], "beam": beams[0],
        "memory_1m_bytes": memory, "memory_1m_target_bytes": MEMORY_1M_TARGET_BYTES,
        "memory_1m_pass": memory is not None and memory <= MEMORY_1M_TARGET_BYTES,
        "latency_ratio_1m_over_10k": ratio,
        "latency_ratio_target": LATENCY_RATIO_TARGET,
        "latency_ratio_pass": ratio <= LATENCY_RATIO_TARGET,
        "trie_bytes_per_item_small": small["trie_bytes_per_item"],
        "trie_bytes_per_item_large": large["trie_bytes_per_item"],
    }
  # The targets are read on the first variant (3 semantic levels); the others are shown.
  targets = figures(level_variants[0])
  targets["variants"] = [figures(levels) for levels in level_variants]
  return {"catalogue": rows, "targets": targets}


def _markdown_catalogue(result: dict) -> str:
  lines = [f"device: {result.get('device', '?')}, {result.get('date', '')}", "",
           "| items | codes per level | beam | trie nodes per depth | trie (MB) | max children "
           "| decode (ms/user) | users/s | compile (s) | memory arg+out+temp (MB) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in result["catalogue"]:
    mem = "n/a" if r["memory_bytes"] is None else (
        f"{r['argument_bytes'] / 2**20:.1f}+{r['output_bytes'] / 2**20:.1f}+"
        f"{r['temp_bytes'] / 2**20:.1f} = {r['memory_bytes'] / 2**20:.1f}")
    lines.append(
        f"| {r['items']:,} | {'+'.join(map(str, r['codebook_sizes']))} | {r['beam']} | "
        f"{' / '.join(f'{x:,}' for x in r['trie_nodes_per_depth'])} | "
        f"{r['trie_bytes'] / 2**20:.2f} | {' / '.join(map(str, r['max_children']))} | "
        f"{r['decode_s_per_user'] * 1e3:.2f} | {r['decode_users_per_s']:.1f} | "
        f"{r['compile_s']:.1f} | {mem} |")
  lines += ["", "| target | value | limit | pass |", "|---|---|---|---|"]
  for i, t in enumerate(result["targets"].get("variants") or [result["targets"]]):
    mem = ("n/a" if t["memory_1m_bytes"] is None
           else f"{t['memory_1m_bytes'] / 2**20:.1f} MB")
    note = ("" if i == 0 else
            f", {t['semantic_levels']} semantic levels: shown, not the target")
    lines += [
        f"| memory_1m_bytes ({t['items_large']:,} items, beam {t['beam']}{note}) | {mem} "
        f"| ≤ {t['memory_1m_target_bytes'] / 1e9:.0f} GB | "
        f"{'pass' if t['memory_1m_pass'] else 'FAIL'} |",
        f"| latency_ratio_1m_over_10k ({t['items_large']:,} / {t['items_small']:,} items, "
        f"beam {t['beam']}{note}) | {t['latency_ratio_1m_over_10k']:.3f} | "
        f"≤ {t['latency_ratio_target']:g} | "
        f"{'pass' if t['latency_ratio_pass'] else 'FAIL'} |"]
  return "\n".join(lines)


SUITES = {"models": suite_models, "scaling": suite_scaling, "catalogue": suite_catalogue}


# ----------------------------------------------------------------------------- peer
PEER_INSTALL = cornac_peer.INSTALL


class PeerError(RuntimeError):
  """The cornac side could not run (missing environment, failure, bad output)."""


def cpu_threads() -> int:
  """Cores this process may run on: XLA's CPU thread pool uses them all."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def machine_peak(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> dict:
  """The machine's matmul rate through XLA: a jitted n×n @ n×n, best of repeats.

  ``dtype="bfloat16"``: bf16 operands accumulated in float32 (what the models' bf16 mode
  runs), the peak to hold a bf16 step against.
  """
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
  mm = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  jax.block_until_ready(mm(a, b))  # compile + warm-up
  times = _time(lambda: mm(a, b), repeats)
  flops = 2.0 * n ** 3
  return {"matmul_n": n, "dtype": dtype, "flops_per_matmul": flops,
          "matmul_times_s": times, "flops_per_s": flops / min(times),
          "flops_per_s_median": flops / statistics.median(times)}


def peer_data(table: table_lib.SidTable, *, users: int, length: int,
              level_weights=(1.0, 0.3, 0.1), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """User sequences and item features for cornac over OUR synthetic catalogue.

  Sequences: int32[users, length], successive random permutations of the item ids laid
  end to end over the first ``length - 2`` positions (cornac's training part under
  leave-last-out), so every item is a training item: cornac's catalogue is the items its
  train set holds, and it must equal ours. Features: float32[num_items, dim], each item's
  codebook vectors summed with decreasing weights, so cornac's residual k-means finds a
  3-level hierarchy like ours.
  """
  rng = np.random.default_rng(seed)
  n = table.num_items
  if users * (length - 2) < n:
    raise ValueError(f"{users} users × {length - 2} training positions cannot hold all "
                     f"{n} items")
  reps = math.ceil(users * length / n) + 1
  flat = np.concatenate([rng.permutation(n) for _ in range(reps)]) + 1
  train = flat[:users * (length - 2)].reshape(users, length - 2)
  tail = flat[users * (length - 2):users * length].reshape(users, 2)
  flat = np.concatenate([train, tail], axis=1)
  if table.codebooks is None:
    raise ValueError("peer_data needs a table with codebooks (see synthetic_table)")
  feats = sum(w * table.codebooks[l][table.codes[:, l]]
              for l, w in zip(range(table.semantic_levels), level_weights))
  return flat.reshape(users, length).astype(np.int32), np.asarray(feats, np.float32)


def run_peer(python: str, argv: list[str], timeout: float) -> dict:
  """Runs ``cornac_peer.py ARGV`` under ``python``; returns the JSON object it prints."""
  cmd = [python, os.path.abspath(cornac_peer.__file__), *argv]
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  try:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout, env=env,
                          check=False)
  except FileNotFoundError as e:
    raise PeerError(f"--peer-python {python!r} does not exist ({e}). Create the peer "
                    f"environment: {PEER_INSTALL}") from e
  except subprocess.TimeoutExpired as e:
    raise PeerError(f"the cornac peer ran past {timeout:.0f} s: {' '.join(cmd)}") from e
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  try:
    result = json.loads(lines[-1])
  except (IndexError, ValueError):
    result = None
  if not isinstance(result, dict):
    raise PeerError(f"the cornac peer ({' '.join(cmd)}) exited with status "
                    f"{proc.returncode} without a JSON result; its stdout ended with: "
                    f"{proc.stdout[-2000:]!r}")
  if "error" in result:
    raise PeerError(result["error"])
  if proc.returncode != 0:
    raise PeerError(f"the cornac peer exited with status {proc.returncode}: {result}")
  return result


def _our_versions() -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "numpy": np.__version__}


def peer_compare(dims: dict, *, items: int, batch: int, history: int, eval_batch: int,
                 beam: int, repeats: int, peer_python: str, peer_steps: int,
                 peer_users: int, peer_warmup_users: int = 2, threads: int | None = None,
                 peak_n: int = 2048, timeout: float = 1800.0, seed: int = 0,
                 runner=None, extra_dtypes: tuple[str, ...] = ()) -> dict:
  """The peer suite's body; ``runner`` (default ``run_peer``) runs the cornac side.

  The headline ratios are for our model in float32, cornac's precision. Each of
  ``extra_dtypes`` (e.g. ``bfloat16``) times our model again in that compute dtype, with
  its own ratios against the same cornac run and its own matmul peak, under
  ``by_dtype``.
  """
  runner = runner or run_peer
  threads = threads or cpu_threads()
  load = {"start": os.getloadavg()}  # other work on the machine skews both sides
  busy = load["start"][0] >= 0.5 * threads
  if busy:
    print(f"WARNING: 1-min load average {load['start'][0]:.1f} on {threads} cores before "
          "the run: other work will skew the timings, cornac's most (torch's OpenMP "
          "threads stall when a core is taken; see cornac_peer.py)", file=sys.stderr,
          flush=True)
  check = runner(peer_python, ["--check"], 300)  # fails fast, before our minutes
  print(f"peer: {json.dumps(check)}", flush=True)

  # Every dtype's peak first, on a quiet process (best of at least 5 products).
  peaks = {d: machine_peak(peak_n, max(repeats, 5), d) for d in ("float32",) + extra_dtypes}
  peak = peaks["float32"]
  for d, p in peaks.items():
    print(f"machine peak (XLA {d} {peak_n}² matmul, float32 accumulation): "
          f"{p['flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)

  table = synthetic_table(items, seed=seed)
  cfg = config_lib.base_config().model
  cfg.update(dims)
  cfg.name = "tiger"
  cfg.dtype = "float32"
  ours = measure_model(cfg, table, batch=batch, history=history, eval_batch=eval_batch,
                       beam=beam, repeats=repeats, extra_decode_batches=(1,))
  print(f"ours: {json.dumps(ours)}", flush=True)
  extra = {}
  for dtype in extra_dtypes:
    low = cfg.copy_and_resolve_references()
    low.dtype = dtype
    extra[dtype] = {
        "peak": peaks[dtype],
        "ours": measure_model(low, table, batch=batch, history=history,
                              eval_batch=eval_batch, beam=beam, repeats=repeats,
                              extra_decode_batches=(1,))}
    print(f"ours ({dtype}): {json.dumps(extra[dtype])}", flush=True)

  # cornac: one session per user of `history + 3` items (train = all but 2, test history =
  # all but the last), enough users for 1 + peer_steps full batches and the whole catalogue.
  length = history + 3
  samples_per_user = history  # train session of history + 1 items -> history samples
  users = max(math.ceil(items / (length - 2)), peer_users + peer_warmup_users,
              math.ceil((peer_steps + 1) * batch / samples_per_user) + 1)
  sequences, features = peer_data(table, users=users, length=length, seed=seed)
  load["before_cornac"] = os.getloadavg()
  with tempfile.TemporaryDirectory(prefix="s2gr_peer_") as tmp:
    np.savez(os.path.join(tmp, "data.npz"), sequences=sequences, features=features)
    spec = {"data": os.path.join(tmp, "data.npz"), "threads": threads, "seed": seed,
            "batch": batch, "history": history, "beam": beam,
            "levels": table.semantic_levels, "codebook": int(table.codebook_sizes[0]),
            "model": {k: cfg[k] for k in ("d_model", "num_heads", "head_dim", "d_ff",
                                          "encoder_layers", "decoder_layers", "dropout")},
            "train_steps": peer_steps, "decode_users": peer_users,
            "decode_warmup": peer_warmup_users, "matmul_n": peak_n}
    with open(os.path.join(tmp, "spec.json"), "w") as f:
      json.dump(spec, f)
    print(f"cornac: {peer_steps} + 1 train steps, {peer_users} + {peer_warmup_users} "
          f"users, {threads} torch threads ...", flush=True)
    cornac = runner(peer_python, ["--spec", os.path.join(tmp, "spec.json")], timeout)
  print(f"cornac: {json.dumps(cornac)}", flush=True)
  load["end"] = os.getloadavg()
  spec.pop("data")
  out = peer_report(ours, cornac, peak, threads=threads, spec=spec,
                    eval_batch=eval_batch, users=users)
  if extra:
    out["by_dtype"] = {
        dtype: peer_report(e["ours"], cornac, e["peak"], threads=threads, spec=spec,
                           eval_batch=eval_batch, users=users)
        for dtype, e in extra.items()}
    for r in out["by_dtype"].values():  # keep only what differs from the headline
      for key in ("cornac", "peer_spec", "versions", "threads"):
        r.pop(key)
      r["train_flops_fraction_of_float32_peak"] = (
          r["ours"]["train_flops_per_s"] / peak["flops_per_s"]
          if r["ours"]["train_flops_per_s"] else None)
  out["load_average_1_5_15min"] = load
  out["machine_busy_at_start"] = busy
  return out


def peer_report(ours: dict, cornac: dict, peak: dict, *, threads: int, spec: dict,
                eval_batch: int, users: int) -> dict:
  """The peer suite's JSON: headline ratios, then both sides' raw figures."""
  one = ours.get("decode_by_batch", {}).get("1")
  ours = dict(ours, decode_user_latency_amortized_s=ours["decode_batch_s"] / eval_batch,
              decode_user_latency_batch1_s=one["decode_batch_s"] if one else None,
              decode_users_per_s_batch1=one["decode_users_per_s"] if one else None,
              versions=_our_versions(), jax_devices=jax.device_count(),
              cpu_threads=threads)
  out = {
      "train_speedup_vs_cornac": (ours["train_examples_per_s"]
                                  / cornac["train_examples_per_s"]),
      "decode_speedup_vs_cornac": ours["decode_users_per_s"] / cornac["decode_users_per_s"],
      "decode_speedup_vs_cornac_batch1": (
          ours["decode_users_per_s_batch1"] / cornac["decode_users_per_s"]
          if one else None),
      "train_flops_fraction_of_peak": (ours["train_flops_per_s"] / peak["flops_per_s"]
                                       if ours["train_flops_per_s"] else None),
      "machine_peak_flops_per_s": peak["flops_per_s"],
      "cornac_train_counted_flops_fraction_of_peak": (
          cornac["train_flops_per_step_counted"] / cornac["train_step_s"]
          / peak["flops_per_s"] if cornac.get("train_flops_per_step_counted") else None),
      "threads": {"cpu_cores": threads, "torch": cornac.get("torch_threads"),
                  "torch_interop": cornac.get("torch_interop_threads")},
      "versions": {"ours": ours["versions"], "cornac": cornac.get("versions")},
      "peer_spec": dict(spec, cornac_users=users,
                        data="synthetic catalogue (suites.synthetic_table); cornac gets "
                             "features built from the same codebooks and its own "
                             "rkmeans SIDs"),
      "machine_peak": peak,
      "ours": ours,
      "cornac": cornac,
  }
  return out


def suite_peer(args) -> dict:
  sizes = args.sizes.split(",")
  if len(sizes) != 1:
    raise PeerError(f"--suite peer takes one --sizes, got {args.sizes!r}")
  return peer_compare(
      dict(MODEL_SIZES[sizes[0]]), items=args.items, batch=args.batch,
      history=args.history, eval_batch=args.eval_batch, beam=args.beam,
      repeats=args.repeats, peer_python=args.peer_python,
      peer_steps=args.peer_steps or args.repeats, peer_users=args.peer_users,
      threads=args.peer_threads, peak_n=args.peak_n, timeout=args.peer_timeout,
      extra_dtypes=tuple(d for d in args.dtypes.split(",") if d and d != "float32"))


def _markdown_peer(result: dict) -> str:
  o, c, spec = result["ours"], result["cornac"], result["peer_spec"]
  m = spec["model"]
  cv = c.get("versions") or {}
  lat1 = o.get("decode_user_latency_batch1_s")
  lines = [
      f"device: {result['device']}, {result['date']}; {result['threads']['cpu_cores']} "
      f"cores (torch threads {result['threads']['torch']})", "",
      f"Model: d_model {m['d_model']}, {m['encoder_layers']}+{m['decoder_layers']} layers, "
      f"{m['num_heads']} heads × {m['head_dim']}, MLP {m['d_ff']}; batch {spec['batch']}, "
      f"history {spec['history']}, beam {spec['beam']}; "
      f"{result['settings']['items']:,} synthetic items", "",
      "| system | params | train step (s) | examples/s | decode users/s | user latency (ms) "
      "| compile train / decode (s) |",
      "|---|---|---|---|---|---|---|",
      f"| s2gr_jax TIGER (JAX {o['versions']['jax']}, jit) | {o['params']:,} | "
      f"{o['train_step_s']:.3f} | {o['train_examples_per_s']:.0f} | "
      f"{o['decode_users_per_s']:.1f} (batch {result['settings']['eval_batch']})"
      f"{'' if lat1 is None else f'; {1 / lat1:.1f} (batch 1)'} | "
      f"{o['decode_user_latency_amortized_s'] * 1e3:.1f} amortized"
      f"{'' if lat1 is None else f'; {lat1 * 1e3:.1f} at batch 1'} | "
      f"{o['compile_train_s']:.1f} / {o['compile_decode_s']:.1f} |",
      f"| cornac {cv.get('cornac', '?')} TIGER (torch {cv.get('torch', '?')}, eager) | "
      f"{c['params']:,} | {c['train_step_s']:.3f} | {c['train_examples_per_s']:.1f} | "
      f"{c['decode_users_per_s']:.2f} (one user at a time) | "
      f"{c['decode_user_s'] * 1e3:.0f} | – |",
      "",
      f"- train_speedup_vs_cornac: {result['train_speedup_vs_cornac']:.1f}×",
      f"- decode_speedup_vs_cornac: {result['decode_speedup_vs_cornac']:.1f}×"
      + ("" if result.get("decode_speedup_vs_cornac_batch1") is None else
         f" (ours at batch 1: {result['decode_speedup_vs_cornac_batch1']:.1f}×)")]
  peak = result["machine_peak_flops_per_s"]
  frac = result["train_flops_fraction_of_peak"]
  lines.append(f"- machine peak (XLA f32 {result['machine_peak']['matmul_n']}² matmul): "
               f"{peak / 1e9:.1f} GFLOP/s; our train step "
               f"{(o['train_flops_per_s'] or 0) / 1e9:.1f} GFLOP/s (XLA count) = "
               + ("n/a" if frac is None else f"{frac:.1%} of peak"))
  cf = result.get("cornac_train_counted_flops_fraction_of_peak")
  if cf is not None:
    lines.append(f"- cornac train step: {c['train_flops_per_step_counted'] / 1e9:.1f} GFLOP "
                 f"(torch FlopCounterMode, matmuls only) = {cf:.1%} of the same peak; "
                 f"torch's own f32 matmul: {c['torch_matmul_flops_per_s'] / 1e9:.1f} GFLOP/s")
  lines.append(f"- medians after warm-up over {len(o['train_step_times_s'])} steps / "
               f"{len(o['decode_batch_times_s'])} decode batches (ours) and "
               f"{len(c['train_step_times_s'])} steps / {c['decode_users']} users (cornac)")
  for dtype, r in (result.get("by_dtype") or {}).items():
    ob = r["ours"]
    lines.append(
        f"- our TIGER in {dtype} (float32 accumulation): train step "
        f"{ob['train_step_s']:.3f} s → train_speedup_vs_cornac "
        f"{r['train_speedup_vs_cornac']:.1f}×; decode {ob['decode_users_per_s']:.1f} users/s "
        f"→ decode_speedup_vs_cornac {r['decode_speedup_vs_cornac']:.1f}×; "
        f"{(ob['train_flops_per_s'] or 0) / 1e9:.1f} GFLOP/s = "
        f"{r['train_flops_fraction_of_peak']:.1%} of the {dtype} matmul peak "
        f"({r['machine_peak_flops_per_s'] / 1e9:.1f} GFLOP/s), "
        f"{r['train_flops_fraction_of_float32_peak']:.1%} of the float32 one")
  load = result.get("load_average_1_5_15min")
  if load:
    lines.append("- 1-min load average at start / before cornac / end: "
                 + " / ".join(f"{load[k][0]:.1f}" for k in ("start", "before_cornac", "end"))
                 + f" on {result['threads']['cpu_cores']} cores"
                 + (" — BUSY MACHINE: other work skewed these timings, cornac's most"
                    if result.get("machine_busy_at_start") else ""))
  return "\n".join(lines)


SUITES["peer"] = suite_peer


def markdown(result: dict) -> str:
  if "cornac" in result:  # peer
    return _markdown_peer(result)
  if "catalogue" in result:
    return _markdown_catalogue(result)
  if "rows" in result:  # scaling
    lines = [f"device: {result['device']}, {result['date']}", "",
             "| size | mesh d×f×t | batch | step (s) | examples/s | tokens/s | "
             "GFLOP/step/device | MFU | memory/device (MB) | decode users/s | compile (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
      lay = r["layout"]
      mem = (r["train_memory_bytes_per_device"] or 0) / 2**20
      lines.append(
          f"| {r['size']} | {lay['data']}×{lay['fsdp']}×{lay['tensor']} | {r['batch']} | "
          f"{r['train_step_s']:.3f} | {r['train_examples_per_s']:.0f} | "
          f"{r['train_tokens_per_s']:.0f} | {(r['train_flops_per_step'] or 0) / 1e9:.1f} | "
          f"{_pct(r.get('mfu'))} | {mem:.0f} | {r['decode_users_per_s']:.1f} | "
          f"{r['compile_train_s']:.1f} |")
    lines += ["", _peak_line(result.get("device_peak"))]
    return "\n".join(lines)
  lines = [f"device: {result['device']}, {result['date']}", "",
           "| model | params | train step (s) | examples/s | GFLOP/step | GFLOP/s | MFU | "
           "decode users/s (beam) | compile train / decode (s) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for name, m in result["models"].items():
    gflop = (m["train_flops_per_step"] or 0) / 1e9
    rate = (m["train_flops_per_s"] or 0) / 1e9
    lines.append(f"| {name} | {m['params']:,} | {m['train_step_s']:.3f} | "
                 f"{m['train_examples_per_s']:.0f} | {gflop:.1f} | {rate:.1f} | "
                 f"{_pct(m.get('mfu'))} | "
                 f"{m['decode_users_per_s']:.1f} | {m['compile_train_s']:.1f} / "
                 f"{m['compile_decode_s']:.1f} |")
  lines += ["", _peak_line(result.get("device_peak"))]
  for k, v in result.get("ratios", {}).items():
    lines.append(f"- {k}: {v:.3f}")
  return "\n".join(lines)


def _pct(x) -> str:
  return "—" if x is None else f"{100 * x:.1f} %"


def _peak_line(peak: dict | None) -> str:
  if not peak or not peak.get("flops_per_s"):
    kind = (peak or {}).get("device_kind", "this device")
    return (f"- MFU: no known peak for {kind} (pass --peak-flops FLOP/s per device; on "
            "CPU the peer suite measures one)")
  return (f"- MFU against {peak['flops_per_s'] / 1e12:.1f} TFLOP/s per device "
          f"({peak['device_kind']}; {peak['source']})")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m s2gr_jax.bench", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--suite", required=True, choices=sorted(SUITES))
  p.add_argument("--out", required=True, help="JSON file (a .md table is written next to it)")
  p.add_argument("--items", type=int, default=12_101, help="synthetic catalogue size")
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--history", type=int, default=20, help="history length (items)")
  p.add_argument("--eval-batch", type=int, default=256)
  p.add_argument("--beam", type=int, default=20)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="models/scaling/catalogue: the models' compute dtype (parameters stay "
                 "float32; bf16 products accumulate in float32)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--sizes", default="paper", help="scaling: comma list of "
                 + ",".join(MODEL_SIZES))
  p.add_argument("--meshes", default="", help="scaling: comma list of DATAxFSDPxTENSOR "
                 "layouts (default: data-parallel over 1, 2, 4, ... devices, then the "
                 "fsdp/tensor splits of all of them)")
  p.add_argument("--no-plot", dest="plot", action="store_false")
  p.add_argument("--peak-flops", type=float, default=0.0,
                 help="models/scaling: peak FLOP/s of one device for MFU (default: the "
                 "data-sheet dense bf16 peak of known GPUs/TPUs; none on CPU)")
  g = p.add_argument_group("peer (cornac TIGER in a subprocess)")
  g.add_argument("--peer-python", default=sys.executable,
                 help="interpreter with torch + cornac (e.g. .venv-peer/bin/python); "
                 f"create it with: {PEER_INSTALL}")
  g.add_argument("--peer-steps", type=int, default=0,
                 help="cornac train steps timed after 1 warm-up step (0: --repeats)")
  g.add_argument("--peer-users", type=int, default=30,
                 help="cornac users decoded one at a time, after 2 warm-up users")
  g.add_argument("--peer-threads", type=int, default=0,
                 help="torch threads (0: the cores this process may use)")
  g.add_argument("--peer-timeout", type=float, default=1800, help="seconds")
  g.add_argument("--dtypes", default="float32",
                 help="peer: comma list; float32 gives the headline ratios (cornac's "
                 "precision), others (bfloat16) are timed too and reported under by_dtype")
  g.add_argument("--peak-n", type=int, default=2048,
                 help="size of the float32 matmul that measures the machine's peak")
  args = p.parse_args(argv)
  bad = [d for d in args.dtypes.split(",") if d not in ("float32", "bfloat16")]
  if bad:
    p.error(f"--dtypes takes float32 and/or bfloat16, got {', '.join(map(repr, bad))}")
  result = {"suite": args.suite, "device": f"{jax.device_count()} × {jax.devices()[0].device_kind}",
            "backend": jax.default_backend(), "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "settings": vars(args)}
  try:
    result.update(SUITES[args.suite](args))
  except PeerError as e:
    raise SystemExit(f"error: {e}") from e
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  md = markdown(result)
  with open(args.out.rsplit(".", 1)[0] + ".md", "w") as f:
    f.write(md + "\n")
  print(md)
