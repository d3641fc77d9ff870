"""Benchmark suites: figures measured in one process, reported as JSON and Markdown.

``scaling``: the train step and the beam search over mesh shapes (data / fsdp / tensor
splits of the available devices) and model sizes, with step time, examples/s,
tokens/s, compile time, XLA's FLOPs per step and its memory estimate per device
(arguments + outputs + temporaries of the compiled step), plus a PNG of examples/s.
On CPU with simulated devices it checks that every layout compiles and runs and what
the partitioning costs; on accelerators it measures scaling.

``models``: the cost of S²GR's thoughts. TIGER and S²GR (same backbone, same SID
table: 3×256 codes + a de-dup level) run the jitted train step and the constrained
beam search on the same synthetic batches; the suite reports step time, examples/s,
users/s, compile time and XLA's FLOP count per step, and the ratios S²GR / TIGER
(SPEC: training ≤ 1.35×, decoding ≤ 1.2×).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import numpy as np

from s2gr_jax import config_lib
from s2gr_jax import decoding
from s2gr_jax import models
from s2gr_jax import parallel
from s2gr_jax import train as train_lib
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
                  beam: int, repeats: int, mesh_cfg=None) -> dict:
  """Train-step and beam-search figures of one model on one mesh (default: 1 device)."""
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
  step_s = statistics.median(train_times)
  decode_s = statistics.median(decode_times)
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
  }


def suite_models(args) -> dict:
  table = synthetic_table(args.items)
  base = config_lib.base_config().model
  out = {}
  for name in ("tiger", "s2gr"):
    cfg = base.copy_and_resolve_references()
    cfg.name = name
    out[name] = measure_model(cfg, table, batch=args.batch, history=args.history,
                              eval_batch=args.eval_batch, beam=args.beam,
                              repeats=args.repeats)
    print(f"{name}: {json.dumps(out[name])}", flush=True)
  return {
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


def suite_scaling(args) -> dict:
  import ml_collections  # pylint: disable=g-import-not-at-top
  table = synthetic_table(args.items)
  rows = []
  for size in args.sizes.split(","):
    model_cfg = config_lib.base_config().model
    model_cfg.update(MODEL_SIZES[size])
    for layout in mesh_layouts(jax.device_count()):
      mesh_cfg = ml_collections.ConfigDict(dict(layout, rules=()))
      batch = max(args.batch, layout["data"] * layout["fsdp"])
      m = measure_model(model_cfg, table, batch=batch, history=args.history,
                        eval_batch=max(args.eval_batch, layout["data"] * layout["fsdp"]),
                        beam=args.beam, repeats=args.repeats, mesh_cfg=mesh_cfg)
      m.update(size=size, layout=layout, batch=batch)
      print(json.dumps(m), flush=True)
      rows.append(m)
  if args.plot:
    _plot_scaling(rows, args.out.rsplit(".", 1)[0] + ".png")
  return {"rows": rows}


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


SUITES = {"models": suite_models, "scaling": suite_scaling}


def markdown(result: dict) -> str:
  if "rows" in result:  # scaling
    lines = [f"device: {result['device']}, {result['date']}", "",
             "| size | mesh d×f×t | batch | step (s) | examples/s | tokens/s | GFLOP/step "
             "| memory/device (MB) | decode users/s | compile (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
      lay = r["layout"]
      mem = (r["train_memory_bytes_per_device"] or 0) / 2**20
      lines.append(
          f"| {r['size']} | {lay['data']}×{lay['fsdp']}×{lay['tensor']} | {r['batch']} | "
          f"{r['train_step_s']:.3f} | {r['train_examples_per_s']:.0f} | "
          f"{r['train_tokens_per_s']:.0f} | {(r['train_flops_per_step'] or 0) / 1e9:.1f} | "
          f"{mem:.0f} | {r['decode_users_per_s']:.1f} | {r['compile_train_s']:.1f} |")
    return "\n".join(lines)
  lines = [f"device: {result['device']}, {result['date']}", "",
           "| model | params | train step (s) | examples/s | GFLOP/step | GFLOP/s | "
           "decode users/s (beam) | compile train / decode (s) |",
           "|---|---|---|---|---|---|---|---|"]
  for name, m in result["models"].items():
    gflop = (m["train_flops_per_step"] or 0) / 1e9
    rate = (m["train_flops_per_s"] or 0) / 1e9
    lines.append(f"| {name} | {m['params']:,} | {m['train_step_s']:.3f} | "
                 f"{m['train_examples_per_s']:.0f} | {gflop:.1f} | {rate:.1f} | "
                 f"{m['decode_users_per_s']:.1f} | {m['compile_train_s']:.1f} / "
                 f"{m['compile_decode_s']:.1f} |")
  lines.append("")
  for k, v in result.get("ratios", {}).items():
    lines.append(f"- {k}: {v:.3f}")
  return "\n".join(lines)


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
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--sizes", default="paper", help="scaling: comma list of "
                 + ",".join(MODEL_SIZES))
  p.add_argument("--no-plot", dest="plot", action="store_false")
  args = p.parse_args(argv)
  result = {"suite": args.suite, "device": f"{jax.device_count()} × {jax.devices()[0].device_kind}",
            "backend": jax.default_backend(), "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "settings": vars(args)}
  result.update(SUITES[args.suite](args))
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  md = markdown(result)
  with open(args.out.rsplit(".", 1)[0] + ".md", "w") as f:
    f.write(md + "\n")
  print(md)
