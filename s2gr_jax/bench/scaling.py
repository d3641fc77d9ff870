"""The ``scaling`` benchmark suite: the train step and the beam search over mesh shapes
and model sizes.

Mesh shapes are data / fsdp / tensor splits of the available devices (``--meshes``, or
``mesh_layouts``); model sizes are ``common.MODEL_SIZES`` (``--sizes``). Each row gives
step time, examples/s, tokens/s, compile time, XLA's FLOPs per step and device, its
memory estimate per device (arguments + outputs + temporaries of the compiled step) and
``mfu`` (FLOP/s per device over the device's data-sheet dense bf16 peak, or
``--peak-flops``), plus a PNG of examples/s. On CPU with simulated devices it checks that
every layout compiles and runs and what the partitioning costs; on accelerators it
measures scaling. On one GPU, the GPU MFU figures::

    python -m s2gr_jax.bench --suite scaling --sizes paper,medium,large --dtype bfloat16 \\
        --out scaling_gpu.json
"""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np

from s2gr_jax.bench import common


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
  layouts = _layouts(args)
  table = common.synthetic_table(args.items)
  peak = common.peak_for(args)
  rows = []
  for size in args.sizes.split(","):
    model_cfg = common.model_config(dtype=getattr(args, "dtype", "float32"),
                                    kernels=getattr(args, "kernels", "auto"),
                                    **common.MODEL_SIZES[size])
    for layout in layouts:
      mesh_cfg = ml_collections.ConfigDict(dict(layout, rules=()))
      batch = max(args.batch, layout["data"] * layout["fsdp"])
      m = common.measure_model(
          model_cfg, table, batch=batch, history=args.history,
          eval_batch=max(args.eval_batch, layout["data"] * layout["fsdp"]),
          beam=args.beam, repeats=args.repeats, mesh_cfg=mesh_cfg)
      m.update(size=size, layout=layout, batch=batch)
      common.add_mfu([m], peak["flops_per_s"])
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
  sizes = sorted({r["size"] for r in rows}, key=list(common.MODEL_SIZES).index)
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


def markdown(result: dict) -> str:
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
        f"{common.pct(r.get('mfu'))} | {mem:.0f} | {r['decode_users_per_s']:.1f} | "
        f"{r['compile_train_s']:.1f} |")
  lines += ["", common.peak_line(result.get("device_peak"))]
  return "\n".join(lines)
