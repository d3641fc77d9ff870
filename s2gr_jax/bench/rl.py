"""The ``rl`` benchmark suite: the GRPO step's cost per user against the supervised step.

For TIGER, S²GR and REG4Rec (the ``models`` suite's shapes and synthetic tables), the
jitted supervised train step and the GRPO step (``rl/grpo.py``: sample ``--group``
constrained paths per user, score them under the policy and the frozen SFT policy,
``--updates`` clipped updates) on the same batch of users; reported: seconds per step,
users/s, compile time, and the ratio of the GRPO step's time per user to the
supervised step's::

    python -m s2gr_jax.bench --suite rl --batch 64 --out rl.json
"""

from __future__ import annotations

import json
import statistics
import time

import jax

from s2gr_jax import config_lib
from s2gr_jax import decoding
from s2gr_jax import models
from s2gr_jax import parallel
from s2gr_jax import train as train_lib
from s2gr_jax.bench import common
from s2gr_jax.rl import grpo
from s2gr_jax.rl import rewards


def _timed(step, state, args, repeats):
  t0 = time.perf_counter()
  compiled = step.lower(state, *args).compile()
  compile_s = time.perf_counter() - t0
  holder = {"state": state}

  def one():
    holder["state"], metrics = compiled(holder["state"], *args)
    return metrics

  jax.block_until_ready(one())  # warm-up
  return statistics.median(common.time_calls(one, repeats)), compile_s


def measure(name: str, table, *, batch: int, history: int, group: int, updates: int,
            repeats: int, dtype: str = "float32", kernels: str = "auto") -> dict:
  config = config_lib.base_config()
  mesh_cfg = config.mesh.copy_and_resolve_references()
  mesh_cfg.data = 1
  mesh = parallel.make_mesh(mesh_cfg)
  model_cfg = common.model_config(name, dtype=dtype, kernels=kernels)
  make = models.build(model_cfg, table, user_buckets=2000, max_history=history)
  tb = parallel.shard_batch(common.synthetic_batch(table, batch, history), mesh)
  key = jax.random.key(0)
  graphdef, _, state = train_lib.create_state(make, train_lib.make_optimizer(config.train),
                                              0, mesh)
  sft_step = train_lib.make_train_step(graphdef, train_lib.make_schedule(config.train))
  sft_s, sft_compile = _timed(sft_step, state, (tb, key), repeats)

  config.rl.update(group_size=group, updates_per_sample=updates)
  search = models.get(name).search
  graphdef, model_graphdef, state = train_lib.create_state(
      make, grpo.make_optimizer(config.rl), 0, mesh)
  ref = jax.tree.map(lambda x: x.copy(), state[0])
  extras = {"compact": False} if search == "sets" else {}
  index = decoding.make_index(table, search, **extras)
  tables = rewards.RewardTables.from_table(table)
  rl_step = grpo.make_rl_step(graphdef, model_graphdef,
                              grpo.GrpoSettings.from_config(config.rl, search))
  rl_s, rl_compile = _timed(rl_step, state, (tb, key, ref, index, tables), repeats)
  return {"sft_step_s": sft_s, "sft_users_per_s": batch / sft_s,
          "rl_step_s": rl_s, "rl_users_per_s": batch / rl_s,
          "rl_paths_per_s": batch * group / rl_s,
          "rl_over_sft_per_user": rl_s / sft_s,
          "compile_sft_s": sft_compile, "compile_rl_s": rl_compile}


def suite_rl(args) -> dict:
  tables = {"tiger": common.synthetic_table(args.items),
            "reg4rec": common.synthetic_table(args.items, levels=4, ordered=False)}
  out = {}
  for name in ("tiger", "s2gr", "reg4rec"):
    out[name] = measure(name, tables.get(name, tables["tiger"]), batch=args.batch,
                        history=args.history, group=args.group, updates=args.updates,
                        repeats=args.repeats, dtype=args.dtype, kernels=args.kernels)
    print(f"{name}: {json.dumps(out[name])}", flush=True)
  return {"models": out, "group": args.group, "updates_per_sample": args.updates}


def markdown(result: dict) -> str:
  lines = [f"device: {result['device']}, {result['date']}; GRPO with "
           f"{result['group']} paths per user, {result['updates_per_sample']} updates "
           "per sample", "",
           "| model | SFT step (s) | SFT users/s | GRPO step (s) | GRPO users/s | "
           "GRPO / SFT per user | compile SFT / GRPO (s) |",
           "|---|---|---|---|---|---|---|"]
  for name, m in result["models"].items():
    lines.append(f"| {name} | {m['sft_step_s']:.3f} | {m['sft_users_per_s']:.0f} | "
                 f"{m['rl_step_s']:.3f} | {m['rl_users_per_s']:.0f} | "
                 f"{m['rl_over_sft_per_user']:.1f}× | {m['compile_sft_s']:.1f} / "
                 f"{m['compile_rl_s']:.1f} |")
  return "\n".join(lines)
