"""The cornac side of ``python -m s2gr_jax.bench --suite peer``: times cornac 3.0.1's
PyTorch ``TIGER`` (``cornac.models.TIGER``) on the data the parent wrote.

This file is a standalone script, run as a SUBPROCESS by ``peer.py`` with the
interpreter given by ``--peer-python``; it never imports ``s2gr_jax`` and ``s2gr_jax``
never imports it, so torch / transformers / cornac stay out of the core dependencies.
Its own environment (kept next to the repository, ignored by git)::

    python3 -m venv .venv-peer
    .venv-peer/bin/pip install torch==2.13.0 transformers cornac==3.0.1

Usage (what the parent runs)::

    PYTHON cornac_peer.py --check            # versions only; fails fast without cornac
    PYTHON cornac_peer.py --spec SPEC.json   # the measurement

It prints exactly one JSON object on stdout (everything the libraries print goes to
stderr). Without torch/transformers/cornac it prints ``{"error": ..., "install": ...}``
and exits with status 3.

How each figure is taken, through cornac's public API only:

* Data: ``NextItemEvaluation.leave_last_out`` over UIRT quadruples (one session per
  user, timestamp = position) with ``item_feature=FeatureModality(features, ids)``, the
  route cornac documents for TIGER. ``tokenizer='rkmeans'`` (no gradient training).
* Training step: ``TIGER.fit(train_set)`` with ``n_epochs=1``. cornac's epoch loop draws
  its batches from ``session_seq_iter`` (a module global of ``recom_tiger``); we replace
  that global with a wrapper that yields the same batches and records the wall time from
  handing batch *n* to the loop until the loop asks for batch *n+1*: exactly one pass of
  cornac's own loop body (SID lookup, ``torch.tensor``, ``zero_grad``, forward with the
  summed per-level cross-entropy, ``backward``, ``AdamW.step``, ``loss.item()``), with the
  iterator's batch assembly excluded (our side times a prepared device batch too). After
  ``1 + steps`` batches the wrapper ends the epoch, so ``fit`` returns normally. No
  private step function is called. Batch 0 is the warm-up and is also the one run under
  ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs of matmuls/attention only).
* Decoding: ``TIGER.score(user_idx, history_items)`` per user, the call cornac's ranking
  evaluation makes (``rank`` adds an argsort over the catalogue, left out): one user at a
  time, constrained beam search of width ``n_beams`` over a Python dict trie, the decoder
  recomputed over the whole prefix at every level (no KV cache). A few warm-up users,
  then the median per-user time.

Threads: torch gets ``spec["threads"]`` intra-op threads (``torch.set_num_threads`` and
``OMP_NUM_THREADS``/``MKL_NUM_THREADS``), the cores XLA's CPU pool uses. Run on a quiet
machine: with another process taking a core, torch's OpenMP threads stall on each
other at every op. On this 2-core box under a load of about 4-6, a paper-size cornac
train step took 24 s with 2 threads against 8 s with 1, and a beam-20 user 3.2 s against
0.14 s (a tiny model: 1.9 s against 0.013 s a step); XLA's pool degrades far less.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

INSTALL = ("python3 -m venv .venv-peer && "
           ".venv-peer/bin/pip install torch==2.13.0 transformers cornac==3.0.1")
MISSING_STATUS = 3


def _imports(out=None):
  """(torch, transformers, cornac), or the error as JSON on ``out`` and exit status 3."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    import cornac  # pylint: disable=g-import-not-at-top
    from cornac.models import TIGER  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    print(json.dumps({
        "error": (f"cornac's TIGER cannot be imported with {sys.executable} ({e}). "
                  f"Create the peer environment: {INSTALL}  and pass "
                  "--peer-python .venv-peer/bin/python"),
        "install": INSTALL}), file=out or sys.stdout, flush=True)
    sys.exit(MISSING_STATUS)
  return torch, transformers, cornac


def _versions(torch, transformers, cornac) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  return {"python": platform.python_version(), "torch": torch.__version__,
          "transformers": transformers.__version__, "cornac": cornac.__version__,
          "numpy": np.__version__}


def _matmul_peak(torch, n: int, repeats: int) -> float:
  """Best float32 n×n @ n×n rate of torch on this machine (FLOP/s), for context."""
  a = torch.randn(n, n)
  b = torch.randn(n, n)
  a @ b  # warm-up
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best


def measure(spec: dict) -> dict:
  torch, transformers, cornac = _imports()
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cornac.data import FeatureModality  # pylint: disable=g-import-not-at-top
  from cornac.eval_methods import NextItemEvaluation  # pylint: disable=g-import-not-at-top
  from cornac.models import TIGER  # pylint: disable=g-import-not-at-top
  from cornac.models.tiger import recom_tiger  # pylint: disable=g-import-not-at-top
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top

  threads = int(spec["threads"])
  torch.set_num_threads(threads)
  t_start = time.perf_counter()
  data = np.load(spec["data"])
  sequences, features = data["sequences"], data["features"].astype(np.float32)
  num_items = int(features.shape[0])
  uirt = [(str(u), str(int(i)), 1.0, t)
          for u, seq in enumerate(sequences) for t, i in enumerate(seq)]
  ev = NextItemEvaluation.leave_last_out(
      data=uirt, exclude_unknowns=True, seed=spec["seed"],
      item_feature=FeatureModality(features=features,
                                   ids=[str(i) for i in range(1, num_items + 1)]))

  steps = int(spec["train_steps"])
  step_times: list[float] = []
  flops = {}
  original = recom_tiger.session_seq_iter

  def timed_iter(*a, **kw):
    for n, batch in enumerate(original(*a, **kw)):
      if len(batch[1]) != spec["batch"]:
        raise RuntimeError(f"cornac yielded a batch of {len(batch[1])}, not "
                           f"{spec['batch']}: give it more training sessions")
      counter = FlopCounterMode(display=False) if n == 0 else contextlib.nullcontext()
      with counter:
        t0 = time.perf_counter()
        yield batch  # cornac's loop body runs here
        step_times.append(time.perf_counter() - t0)
      if n == 0:
        flops["train"] = int(counter.get_total_flops())
      if n == steps:  # batch 0 was the warm-up
        return
    raise RuntimeError(f"only {len(step_times)} batches for {steps + 1} steps")

  dims = spec["model"]
  model = TIGER(tokenizer="rkmeans", rqvae_num_levels=spec["levels"],
                rqvae_codebook_size=spec["codebook"], d_model=dims["d_model"],
                d_ff=dims["d_ff"], num_heads=dims["num_heads"], d_kv=dims["head_dim"],
                num_enc_layers=dims["encoder_layers"],
                num_dec_layers=dims["decoder_layers"], dropout=dims["dropout"],
                max_len=spec["history"], n_epochs=1, batch_size=spec["batch"],
                learning_rate=1e-3, lr_schedule="constant", model_selection="last",
                scoring="beam", n_beams=spec["beam"], device="cpu", verbose=False,
                seed=spec["seed"])
  recom_tiger.session_seq_iter = timed_iter
  try:
    t0 = time.perf_counter()
    model.fit(ev.train_set)
    fit_s = time.perf_counter() - t0
  finally:
    recom_tiger.session_seq_iter = original
  if len(step_times) != steps + 1:
    raise RuntimeError(f"timed {len(step_times)} steps, expected {steps + 1}")
  if model.total_items != num_items:
    raise RuntimeError(f"cornac knows {model.total_items} items, expected {num_items}")

  # Decoding: the test histories (all but the last item), last `history` items.
  users = int(spec["decode_users"]) + int(spec["decode_warmup"])
  iid = ev.global_iid_map
  histories = [[iid[str(int(i))] for i in seq[:-1]] for seq in sequences[:users]]
  user_times, beams_found = [], []
  for u, hist in enumerate(histories):
    t0 = time.perf_counter()
    scores = model.score(u, hist)
    user_times.append(time.perf_counter() - t0)
    beams_found.append(int((scores > -1e9).sum()))
  warm = int(spec["decode_warmup"])
  decode_times = user_times[warm:]
  train_times = step_times[1:]
  step_s = statistics.median(train_times)
  user_s = statistics.median(decode_times)
  return {
      "versions": _versions(torch, transformers, cornac),
      "torch_threads": torch.get_num_threads(),
      "torch_interop_threads": torch.get_num_interop_threads(),
      "params": int(sum(p.numel() for p in model.model.parameters())),
      "level_sizes": [int(s) for s in model.level_sizes],
      "total_items": int(model.total_items),
      "train_sessions": int(ev.train_set.num_sessions),
      "train_step_s": step_s, "train_step_times_s": train_times,
      "train_warmup_step_s": step_times[0],
      "train_examples_per_s": spec["batch"] / step_s,
      "train_flops_per_step_counted": flops.get("train"),
      "fit_setup_s": fit_s - sum(step_times),
      "decode_user_s": user_s, "decode_user_times_s": decode_times,
      "decode_users_per_s": 1.0 / user_s,
      "decode_users_per_s_mean": len(decode_times) / sum(decode_times),
      "decode_users": len(decode_times), "decode_warmup_users": warm,
      "decode_items_scored_mean": float(np.mean(beams_found[warm:])),
      "torch_matmul_flops_per_s": _matmul_peak(torch, spec["matmul_n"], 3),
      "total_s": time.perf_counter() - t_start,
  }


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  g = p.add_mutually_exclusive_group(required=True)
  g.add_argument("--check", action="store_true", help="print versions and exit")
  g.add_argument("--spec", help="JSON file written by peer.suite_peer")
  args = p.parse_args(argv)
  out = sys.stdout
  spec = None
  if args.spec:
    with open(args.spec) as f:
      spec = json.load(f)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # before torch is imported
      os.environ[var] = str(spec["threads"])
  with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the one JSON line
    modules = _imports(out)
    result = ({"versions": _versions(*modules)} if spec is None else measure(spec))
  out.write(json.dumps(result) + "\n")
  out.flush()


if __name__ == "__main__":
  main()
