"""Benchmark suites: figures measured in one process, reported as JSON and Markdown.

``models`` (models.py): TIGER against S²GR, the cost of S²GR's thoughts: train step and
constrained beam search on the same batches, and the ratios S²GR / TIGER::

    python -m s2gr_jax.bench --suite models --out models.json

``scaling`` (scaling.py): the train step and the beam search over mesh shapes (data /
fsdp / tensor splits of the devices, ``--meshes``) and model sizes (``--sizes``), with
FLOPs, memory per device and a PNG of examples/s. On one GPU, the GPU MFU figures::

    python -m s2gr_jax.bench --suite scaling --sizes paper,medium,large --dtype bfloat16 \\
        --out scaling_gpu.json

``models`` and ``scaling`` give each row's ``mfu``: FLOP/s per device over the device's
data-sheet dense bf16 peak (``common.DEVICE_BF16_PEAKS``: H100, H200, A100, L4, TPU
v2-v6e) or ``--peak-flops``.

``catalogue`` (catalogue.py): constrained beam-search latency per user and memory of the
jitted decode for synthetic catalogues of 10k, 100k and 1M items, against the 1M-item
targets (≤ 2 GB, latency ≤ 2× the 10k one)::

    python -m s2gr_jax.bench --suite catalogue --out catalogue.json

``peer`` (peer.py): our TIGER against cornac 3.0.1's PyTorch ``TIGER`` on the same
machine, same model size, batch, beam and catalogue; cornac runs in a subprocess under
``--peer-python`` (``cornac_peer.py``), in its own environment (ignored by git)::

    python3 -m venv .venv-peer
    .venv-peer/bin/pip install torch==2.13.0 transformers cornac==3.0.1

    python -m s2gr_jax.bench --suite peer --out peer.json --peer-python .venv-peer/bin/python

``small`` (small.py): the real training job end to end (``python -m s2gr_jax.main`` in a
subprocess, fresh workdir) for TIGER and S²GR at the small size (d_model 64, 2+2 layers,
batch 256, beam 20), this checkout against the code of ``--against`` (a temporary git
worktree), runs alternating over ``--rounds``: training examples/s, validation users/s,
compile and wall seconds, medians and the ratios current / against. ``--data`` synthetic
(``configs/default.py``) or scientific/beauty (``configs/{model}_{data}.py:compare``,
TF-IDF RQ-KMeans SIDs); ``--tiny`` the ``:tiny`` presets (tests)::

    python -m s2gr_jax.bench --suite small --against HEAD~1 --rounds 2 --steps 300 \\
        --out small.json

``rl`` (rl.py): the GRPO step's cost per user against the supervised step.

``lm`` (lm.py): Gemma 3 270M on this device: prompt (prefill), decode and SFT training
tokens/s (full and LoRA) and memory::

    python -m s2gr_jax.bench --suite lm --batch 4 --seq-len 128 --out lm.json

Every suite writes its JSON to ``--out`` (with the flags under ``settings``) and a
Markdown table next to it (same name, ``.md``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import jax

from s2gr_jax.bench import catalogue
from s2gr_jax.bench import common
from s2gr_jax.bench import models
from s2gr_jax.bench import peer
from s2gr_jax.bench import lm
from s2gr_jax.bench import rl
from s2gr_jax.bench import scaling
from s2gr_jax.bench import small

# suite name → (the suite: args → its part of the JSON, that JSON → its Markdown)
SUITES = {
    "models": (models.suite_models, models.markdown),
    "scaling": (scaling.suite_scaling, scaling.markdown),
    "catalogue": (catalogue.suite_catalogue, catalogue.markdown),
    "sets": (catalogue.suite_sets, catalogue.markdown_sets),
    "peer": (peer.suite_peer, peer.markdown),
    "rl": (rl.suite_rl, rl.markdown),
    "lm": (lm.suite_lm, lm.markdown),
    "small": (small.suite_small, small.markdown),
}


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
  p.add_argument("--kernels", default="auto", choices=("auto", "cpu", "plain"),
                 help="models/scaling/catalogue/peer: config.model.kernels of our models "
                 "(auto: the XLA:CPU speed pieces on CPU, the plain code elsewhere)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--sizes", default="paper", help="scaling: comma list of "
                 + ",".join(common.MODEL_SIZES))
  p.add_argument("--meshes", default="", help="scaling: comma list of DATAxFSDPxTENSOR "
                 "layouts (default: data-parallel over 1, 2, 4, ... devices, then the "
                 "fsdp/tensor splits of all of them)")
  p.add_argument("--no-plot", dest="plot", action="store_false")
  p.add_argument("--peak-flops", type=float, default=0.0,
                 help="models/scaling: peak FLOP/s of one device for MFU (default: the "
                 "data-sheet dense bf16 peak of known GPUs/TPUs; none on CPU)")
  g = p.add_argument_group("rl (the GRPO step against the supervised step)")
  g.add_argument("--group", type=int, default=16, help="sampled paths per user")
  g.add_argument("--updates", type=int, default=2, help="updates per sample")
  g = p.add_argument_group("lm (Gemma 3 270M: prompt, decode and training tokens/s)")
  g.add_argument("--lm", default="270m", choices=("270m", "tiny"),
                 help="the real model (fetched on first use) or the random tiny config")
  g.add_argument("--seq-len", type=int, default=128, help="prompt / training tokens")
  g.add_argument("--decode-tokens", type=int, default=64, help="cache slots past the prompt")
  g.add_argument("--lora-rank", type=int, default=8)
  g.add_argument("--remat", action="store_true", help="also time gradient checkpointing")
  g = p.add_argument_group("peer (cornac TIGER in a subprocess)")
  g.add_argument("--peer-python", default=sys.executable,
                 help="interpreter with torch + cornac (e.g. .venv-peer/bin/python); "
                 f"create it with: {peer.PEER_INSTALL}")
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
  g = p.add_argument_group("small (the training job end to end, against another commit)")
  g.add_argument("--against", default="HEAD~1", help="git revision whose code the "
                 "current checkout is compared with")
  g.add_argument("--rounds", type=int, default=2,
                 help="runs per side and model, alternating current / against")
  g.add_argument("--steps", type=int, default=300, help="train steps of each run")
  g.add_argument("--data", default="synthetic", choices=small.DATASETS)
  g.add_argument("--models", default="tiger,s2gr", help="comma list")
  g.add_argument("--tiny", action="store_true",
                 help="the recipes' :tiny presets (tests) instead of the small size")
  g.add_argument("--cache-dir", default="",
                 help="JAX compilation caches DIR/current and DIR/against, kept (warm on "
                 "the next invocation); default: a fresh one per side, removed")
  g.add_argument("--run-timeout", type=float, default=3600,
                 help="seconds per run before it counts as failed")
  args = p.parse_args(argv)
  bad = [d for d in args.dtypes.split(",") if d not in ("float32", "bfloat16")]
  if bad:
    p.error(f"--dtypes takes float32 and/or bfloat16, got {', '.join(map(repr, bad))}")
  suite, markdown = SUITES[args.suite]
  if args.suite == "small":
    small.keep_parent_light()
  result = {"suite": args.suite,
            "device": f"{jax.device_count()} × {jax.devices()[0].device_kind}",
            "backend": jax.default_backend(), "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "settings": vars(args)}
  try:
    result.update(suite(args))
  except peer.PeerError as e:
    raise SystemExit(f"error: {e}") from e
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  md = markdown(result)
  with open(args.out.rsplit(".", 1)[0] + ".md", "w") as f:
    f.write(md + "\n")
  print(md)
