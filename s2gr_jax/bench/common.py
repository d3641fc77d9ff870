"""What the benchmark suites share: synthetic catalogues and batches, device peaks and
MFU, timing, and the train-step + beam-search measurement of one model on one mesh.

``measure_model`` is the core of the ``models``, ``scaling`` and ``peer`` suites: it
jits the train step and the constrained beam search of a model over a synthetic SID
table and reports step time, examples/s, tokens/s, compile time, XLA's FLOPs per step
and device and its memory estimate per device. ``DEVICE_BF16_PEAKS`` holds the
data-sheet dense bf16 peaks that a row's ``mfu`` (``add_mfu``) is read against.
"""

from __future__ import annotations

import statistics
import time

from flax import nnx
import jax
import ml_collections
import numpy as np

from s2gr_jax import config_lib
from s2gr_jax import decoding
from s2gr_jax import models
from s2gr_jax import parallel
from s2gr_jax import train as train_lib
from s2gr_jax.data import batches as batches_lib
from s2gr_jax.sid import table as table_lib

# Encoder–decoder sizes of ``--sizes``: the keys of each model section they set.
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


def model_config(name: str | None = None, *, dtype: str = "float32", kernels: str = "auto",
                 **values) -> ml_collections.ConfigDict:
  """``base_config().model`` for model ``name`` (None: the base config's): ``kernels``,
  and the model's section in compute ``dtype`` with ``values`` set last (they win)."""
  cfg = config_lib.base_config().model
  cfg.name = name or cfg.name
  cfg.kernels = kernels
  cfg[cfg.name].dtype = dtype
  cfg[cfg.name].update(values)
  return cfg


def synthetic_table(num_items: int, levels: int = 3, codebook: int = 256, dim: int = 32,
                    seed: int = 0, ordered: bool = True) -> table_lib.SidTable:
  """Random codes (``levels`` × ``codebook``, plus the de-dup level where they collide)
  and random codebooks, so that S²GR's codebook clusters and the peer's features exist;
  ``ordered=False`` marks them parallel codebooks (REG4Rec's MPQ tokens)."""
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, codebook, (num_items, levels))
  books = [rng.normal(size=(codebook, dim)).astype(np.float32) for _ in range(levels)]
  return table_lib.SidTable.from_semantic_codes(codes, (codebook,) * levels, ordered,
                                                codebooks=books)


def synthetic_batch(table: table_lib.SidTable, batch: int, history: int, seed: int = 0):
  """A full batch (no padding) of random histories, targets and user buckets."""
  rng = np.random.default_rng(seed)
  # Drawn in this order (histories, targets, users) so that a seed keeps its batch.
  items = rng.integers(1, table.num_items + 1, (batch, history))
  target = rng.integers(1, table.num_items + 1, batch)
  users = rng.integers(0, 2000, batch)
  return batches_lib.from_histories(items, table.lookup(), users, target_items=target)


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


def peak_for(args) -> dict:
  """The peak a suite's MFU is read against: ``--peak-flops``, else the data sheet's."""
  kind = jax.devices()[0].device_kind
  if getattr(args, "peak_flops", 0):
    return {"flops_per_s": args.peak_flops, "source": "--peak-flops", "device_kind": kind}
  return {"flops_per_s": device_bf16_peak(kind), "device_kind": kind,
          "source": "data sheet, dense bf16 per device (MFU of float32 runs is against "
                    "it too)"}


def pct(x) -> str:
  return "—" if x is None else f"{100 * x:.1f} %"


def peak_line(peak: dict | None) -> str:
  """The Markdown line that says what the MFU column is read against."""
  if not peak or not peak.get("flops_per_s"):
    kind = (peak or {}).get("device_kind", "this device")
    return (f"- MFU: no known peak for {kind} (pass --peak-flops FLOP/s per device; on "
            "CPU the peer suite measures one)")
  return (f"- MFU against {peak['flops_per_s'] / 1e12:.1f} TFLOP/s per device "
          f"({peak['device_kind']}; {peak['source']})")


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else None


def time_calls(fn, repeats: int) -> list[float]:
  """Wall seconds of ``repeats`` calls of ``fn``, each until its result is ready."""
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

  ``model_cfg`` is a whole ``config.model`` (``name``, ``kernels`` and the sections).
  ``extra_decode_batches``: further decode batch sizes to time (e.g. ``(1,)`` for the
  latency of one user), reported under ``decode_by_batch``.
  """
  config = config_lib.base_config()
  if mesh_cfg is None:
    mesh_cfg = config.mesh.copy_and_resolve_references()
    mesh_cfg.data = 1
  mesh = parallel.make_mesh(mesh_cfg)
  make = models.build(model_cfg, table, user_buckets=2000, max_history=history)
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
  train_times = time_calls(one_step, repeats)

  index = jax.device_put(decoding.make_index(table, models.get(model_cfg.name).search),
                         parallel.replicated(mesh))
  eb = parallel.shard_batch(synthetic_batch(table, eval_batch, history, seed=1), mesh)

  @jax.jit
  def search(model_state, b, index):
    model = nnx.merge(model_graphdef, model_state)
    return decoding.recommend(model, b, index, beam=beam)

  t0 = time.perf_counter()
  search.lower(holder["state"][0], eb, index).compile()
  compile_decode = time.perf_counter() - t0
  jax.block_until_ready(search(holder["state"][0], eb, index))
  decode_times = time_calls(lambda: search(holder["state"][0], eb, index), repeats)
  by_batch = {}
  for b in extra_decode_batches:
    xb = parallel.shard_batch(synthetic_batch(table, b, history, seed=2), mesh)
    t0 = time.perf_counter()
    search.lower(holder["state"][0], xb, index).compile()
    compile_b = time.perf_counter() - t0
    jax.block_until_ready(search(holder["state"][0], xb, index))
    times_b = time_calls(lambda xb=xb: search(holder["state"][0], xb, index), repeats)
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
