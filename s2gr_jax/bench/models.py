"""The ``models`` benchmark suite: the cost of S²GR's thoughts and REG4Rec's search.

TIGER and S²GR (same backbone, same SID table: 3×256 codes + a de-dup level) and REG4Rec
(the same backbone over 4 parallel codebooks of 256 codes, its CRSS search with CORP)
run the jitted train step and the constrained beam search on synthetic batches of the
same size; the suite reports step time, examples/s, users/s, compile time, XLA's FLOP
count per step, each model's ``mfu`` (FLOP/s over the device's data-sheet dense bf16
peak, or ``--peak-flops``), and the ratios to TIGER (SPEC: S²GR training ≤ 1.35×,
decoding ≤ 1.2×)::

    python -m s2gr_jax.bench --suite models --out models.json
"""

from __future__ import annotations

import json

from s2gr_jax.bench import common


def suite_models(args) -> dict:
  tables = {"tiger": common.synthetic_table(args.items),
            "reg4rec": common.synthetic_table(args.items, levels=4, ordered=False)}
  peak = common.peak_for(args)
  out = {}
  for name in ("tiger", "s2gr", "reg4rec"):
    table = tables.get(name, tables["tiger"])
    cfg = common.model_config(name, dtype=getattr(args, "dtype", "float32"),
                              kernels=getattr(args, "kernels", "auto"))
    out[name] = common.measure_model(cfg, table, batch=args.batch, history=args.history,
                                     eval_batch=args.eval_batch, beam=args.beam,
                                     repeats=args.repeats)
    common.add_mfu([out[name]], peak["flops_per_s"])
    print(f"{name}: {json.dumps(out[name])}", flush=True)
  return {
      "device_peak": peak,
      "models": out,
      "ratios": {
          "s2gr_over_tiger_train_step": (out["s2gr"]["train_step_s"]
                                         / out["tiger"]["train_step_s"]),
          "s2gr_over_tiger_decode": (out["s2gr"]["decode_batch_s"]
                                     / out["tiger"]["decode_batch_s"]),
          "reg4rec_over_tiger_train_step": (out["reg4rec"]["train_step_s"]
                                            / out["tiger"]["train_step_s"]),
          "reg4rec_over_tiger_decode": (out["reg4rec"]["decode_batch_s"]
                                        / out["tiger"]["decode_batch_s"]),
      },
  }


def markdown(result: dict) -> str:
  lines = [f"device: {result['device']}, {result['date']}", "",
           "| model | params | train step (s) | examples/s | GFLOP/step | GFLOP/s | MFU | "
           "decode users/s (beam) | compile train / decode (s) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for name, m in result["models"].items():
    gflop = (m["train_flops_per_step"] or 0) / 1e9
    rate = (m["train_flops_per_s"] or 0) / 1e9
    lines.append(f"| {name} | {m['params']:,} | {m['train_step_s']:.3f} | "
                 f"{m['train_examples_per_s']:.0f} | {gflop:.1f} | {rate:.1f} | "
                 f"{common.pct(m.get('mfu'))} | "
                 f"{m['decode_users_per_s']:.1f} | {m['compile_train_s']:.1f} / "
                 f"{m['compile_decode_s']:.1f} |")
  lines += ["", common.peak_line(result.get("device_peak"))]
  for k, v in result.get("ratios", {}).items():
    lines.append(f"- {k}: {v:.3f}")
  return "\n".join(lines)
