"""The ``lm`` benchmark suite: what Gemma 3 270M costs on this device.

    python -m s2gr_jax.bench --suite lm --batch 4 --seq-len 128 --out lm.json
    python -m s2gr_jax.bench --suite lm --lm tiny --out lm_tiny.json   # (tests)

Measured in one process on random tokens: prompt tokens/s (the forward pass over the
prompt that fills the KV cache), training tokens/s (forward + backward + AdamW of the
completion-loss SFT step over every position, full fine-tuning and LoRA), decode
tokens/s (one cached step for the whole batch), and memory: the compiled program's
arguments + outputs + temporaries (XLA's memory analysis) of each, and the process's
peak resident memory.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import statistics
import time

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from s2gr_jax import parallel
from s2gr_jax import train as train_lib
from s2gr_jax.bench import common
from s2gr_jax.lm import gemma
from s2gr_jax.lm import gguf_io
from s2gr_jax.lm import sft


def _memory(compiled) -> int | None:
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  return int(mem.argument_size_in_bytes + mem.output_size_in_bytes
             + mem.temp_size_in_bytes)


def _time(fn, args, repeats):
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))
  return statistics.median(common.time_calls(lambda: compiled(*args), repeats)), \
      compile_s, _memory(compiled)


def _load(which: str, dtype: str, lora_rank: int = 0):
  if which == "tiny":
    return gemma.GemmaConfig.tiny(dtype=dtype, lora_rank=lora_rank), None
  from s2gr_jax.lm import weights  # pylint: disable=g-import-not-at-top
  return gguf_io.load_gguf(weights.fetch_gguf(), dtype=dtype, lora_rank=lora_rank)


def _train(cfg, params, batch, seq_len, repeats, remat):
  cfg = dataclasses.replace(cfg, remat=remat)
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1,
                                                           rules=())))
  wrt = nnx.LoRAParam if cfg.lora_rank else nnx.Param
  graphdef, _, state = train_lib.create_state(
      lambda rngs: gemma.Gemma3(cfg, rngs=rngs), sft.make_optimizer(1e-5, 1, 100), 0,
      mesh, wrt=wrt)
  if params is not None:
    model, opt = nnx.merge(graphdef, state)
    gguf_io.set_params(model, params)
    state = nnx.split((model, opt))[1]
  rng = np.random.default_rng(0)
  examples = [sft.Example(tuple(rng.integers(10, 1000, seq_len // 2).tolist()),
                          tuple(rng.integers(10, 1000, seq_len // 2 + 1).tolist()))
              for _ in range(batch)]
  b = {k: jnp.asarray(v) for k, v in sft.pack(examples, seq_len).items()}
  b["loss_mask"] = jnp.asarray(b["valid"], jnp.float32)  # every position trains
  step = sft.make_step(graphdef, wrt)
  key = jax.random.key(0)
  t0 = time.perf_counter()
  compiled = step.lower(state, b, key).compile()
  compile_s = time.perf_counter() - t0
  holder = {"state": state}

  def one():
    holder["state"], metrics = compiled(holder["state"], b, key)
    return metrics

  jax.block_until_ready(one())
  step_s = statistics.median(common.time_calls(one, repeats))
  trainable = sum(x.size for x in jax.tree.leaves(nnx.state(nnx.merge(graphdef,
                                                                      holder["state"])[0],
                                                            wrt)))
  return {"step_s": step_s, "tokens_per_s": batch * seq_len / step_s,
          "compile_s": compile_s, "memory_bytes": _memory(compiled),
          "trainable_params": int(trainable)}


def suite_lm(args) -> dict:
  dtype = args.dtype
  cfg, params = _load(args.lm, dtype)
  from s2gr_jax import lm as lm_lib  # pylint: disable=g-import-not-at-top
  model = lm_lib.build(cfg, params)
  b, t = args.batch, args.seq_len
  tokens = jax.random.randint(jax.random.key(0), (b, t), 10, 1000)
  valid = jnp.ones((b, t), bool)
  graphdef, state = nnx.split(model)

  def prefill(state, tokens, valid):
    m = nnx.merge(graphdef, state)
    hidden, cache = m.prefill(tokens, valid, t + args.decode_tokens)
    return m.logits(hidden), cache

  prompt_s, prompt_compile, prompt_mem = _time(prefill, (state, tokens, valid),
                                               args.repeats)
  _, cache = jax.jit(prefill)(state, tokens, valid)

  def decode(state, token, cache):
    m = nnx.merge(graphdef, state)
    hidden, cache = m.decode(token, cache)
    return m.logits(hidden[:, 0]), cache

  decode_s, decode_compile, decode_mem = _time(decode, (state, tokens[:, :1], cache),
                                               args.repeats)
  out = {"model": args.lm, "params": model.num_params(), "batch": b, "seq_len": t,
         "prompt": {"s": prompt_s, "tokens_per_s": b * t / prompt_s,
                    "compile_s": prompt_compile, "memory_bytes": prompt_mem},
         "decode": {"step_s": decode_s, "tokens_per_s": b / decode_s,
                    "compile_s": decode_compile, "memory_bytes": decode_mem,
                    "cache_slots": t + args.decode_tokens}}
  print(f"prompt/decode: {json.dumps(out)}", flush=True)
  del model, state, cache
  out["train_full"] = _train(cfg, params, b, t, args.repeats, remat=False)
  print(f"train_full: {json.dumps(out['train_full'])}", flush=True)
  if args.remat:
    out["train_full_remat"] = _train(cfg, params, b, t, args.repeats, remat=True)
    print(f"train_full_remat: {json.dumps(out['train_full_remat'])}", flush=True)
  out["train_lora"] = _train(dataclasses.replace(cfg, lora_rank=args.lora_rank), params,
                             b, t, args.repeats, remat=False)
  out["train_lora"]["rank"] = args.lora_rank
  print(f"train_lora: {json.dumps(out['train_lora'])}", flush=True)
  out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {"lm": out}


def markdown(result: dict) -> str:
  m = result["lm"]
  gb = lambda x: "—" if x is None else f"{x / 2**30:.2f}"
  lines = [f"device: {result['device']}, {result['date']}; {m['model']} "
           f"({m['params']:,} parameters), batch {m['batch']}, {m['seq_len']} tokens, "
           f"{result['settings']['dtype']}", "",
           "| what | seconds | tokens/s | compile (s) | program memory (GiB) |",
           "|---|---|---|---|---|",
           f"| prompt (prefill {m['seq_len']} tokens) | {m['prompt']['s']:.3f} | "
           f"{m['prompt']['tokens_per_s']:.0f} | {m['prompt']['compile_s']:.1f} | "
           f"{gb(m['prompt']['memory_bytes'])} |",
           f"| decode (one cached step, {m['decode']['cache_slots']} slots) | "
           f"{m['decode']['step_s']:.4f} | {m['decode']['tokens_per_s']:.1f} | "
           f"{m['decode']['compile_s']:.1f} | {gb(m['decode']['memory_bytes'])} |"]
  for name, label in (("train_full", "SFT step, full fine-tuning"),
                      ("train_full_remat", "SFT step, full, gradient checkpointing"),
                      ("train_lora", "SFT step, LoRA")):
    if name in m:
      r = m[name]
      extra = f" rank {r['rank']}" if "rank" in r else ""
      lines.append(f"| {label}{extra} ({r['trainable_params']:,} trained) | "
                   f"{r['step_s']:.3f} | {r['tokens_per_s']:.0f} | {r['compile_s']:.1f} | "
                   f"{gb(r['memory_bytes'])} |")
  lines += ["", f"peak resident memory of the process: {gb(m['peak_rss_bytes'])} GiB"]
  return "\n".join(lines)
