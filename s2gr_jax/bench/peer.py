"""The ``peer`` benchmark suite: our TIGER against the PyTorch reference, cornac 3.0.1's
``TIGER``, on the same machine in one run.

Same model size (``--sizes``, default paper: d_model 128, 4+4 layers, 6 heads × 64, MLP
1024, dropout 0.1), same batch, history length and beam, same synthetic catalogue
(``--items`` items, 3×256 codes). cornac runs in a SUBPROCESS (``cornac_peer.py``) under
``--peer-python``, with torch limited to as many threads as there are cores (XLA's CPU
pool uses them all); torch and cornac are never imported here. Its environment (ignored
by git)::

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

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from s2gr_jax.bench import common
from s2gr_jax.bench import cornac_peer
from s2gr_jax.sid import table as table_lib

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
  times = common.time_calls(lambda: mm(a, b), repeats)
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
                 runner=None, extra_dtypes: tuple[str, ...] = (),
                 kernels: str = "auto") -> dict:
  """The peer suite's body; ``runner`` (default ``run_peer``) runs the cornac side.

  The headline ratios are for our model in float32, cornac's precision. Each of
  ``extra_dtypes`` (e.g. ``bfloat16``) times our model again in that compute dtype, with
  its own ratios against the same cornac run and its own matmul peak, under
  ``by_dtype``. ``kernels``: our model's ``config.model.kernels``.
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

  table = common.synthetic_table(items, seed=seed)
  cfg = common.model_config("tiger", dtype="float32", kernels=kernels, **dims)
  ours = common.measure_model(cfg, table, batch=batch, history=history,
                              eval_batch=eval_batch, beam=beam, repeats=repeats,
                              extra_decode_batches=(1,))
  print(f"ours: {json.dumps(ours)}", flush=True)
  extra = {}
  for dtype in extra_dtypes:
    low = cfg.copy_and_resolve_references()
    low.tiger.dtype = dtype
    extra[dtype] = {
        "peak": peaks[dtype],
        "ours": common.measure_model(low, table, batch=batch, history=history,
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
            "model": {k: cfg.tiger[k] for k in ("d_model", "num_heads", "head_dim", "d_ff",
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
                        data="synthetic catalogue (common.synthetic_table); cornac gets "
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
      dict(common.MODEL_SIZES[sizes[0]]), items=args.items, batch=args.batch,
      history=args.history, eval_batch=args.eval_batch, beam=args.beam,
      repeats=args.repeats, peer_python=args.peer_python,
      peer_steps=args.peer_steps or args.repeats, peer_users=args.peer_users,
      threads=args.peer_threads, peak_n=args.peak_n, timeout=args.peer_timeout,
      extra_dtypes=tuple(d for d in args.dtypes.split(",") if d and d != "float32"),
      kernels=getattr(args, "kernels", "auto"))


def markdown(result: dict) -> str:
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
