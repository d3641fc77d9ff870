"""The language model from the command line.

    python -m s2gr_jax.lm generate --prompt "The capital of France is" [--max-new-tokens 32]
        [--chat] [--beam K | --sample --temperature T] [--gguf FILE]
    python -m s2gr_jax.lm sft --data train.jsonl --val val.jsonl --workdir DIR
        [--lora-rank 8] [--steps 200] [--batch 8] [--seq-len 256] [--lr 1e-4] [--chat]
        [--remat] [--dtype auto|float32|bfloat16]

``generate`` fetches Gemma 3 270M on first use (``weights.py``) and prints the
continuation (greedy unless told otherwise). It is the pretrained base model, not the
instruction-tuned one: it continues text; ``--chat`` only formats the prompt with
Gemma's chat template (for models fine-tuned on it). ``sft`` fine-tunes it on JSON lines of
{"prompt": ..., "completion": ...} with the completion-only loss (``sft.py``);
rerunning the same command resumes from the workdir's checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time


def _dtype(name: str) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  if name == "auto":  # bf16 where the hardware computes in it
    return "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
  return name


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m s2gr_jax.lm",
                                   description="Gemma 3 270M in JAX")
  sub = parser.add_subparsers(dest="command", required=True)
  g = sub.add_parser("generate", help="continue a prompt")
  g.add_argument("--prompt", required=True)
  g.add_argument("--max-new-tokens", type=int, default=32)
  g.add_argument("--chat", action="store_true", help="wrap in Gemma's chat template")
  g.add_argument("--beam", type=int, default=0, help="beam search with K beams")
  g.add_argument("--sample", action="store_true")
  g.add_argument("--temperature", type=float, default=1.0)
  g.add_argument("--seed", type=int, default=0)
  g.add_argument("--gguf", default=None, help="a Gemma 3 GGUF (default: fetched 270M)")
  g.add_argument("--dtype", default="auto")
  s = sub.add_parser("sft", help="fine-tune on (prompt, completion) JSON lines")
  s.add_argument("--data", required=True)
  s.add_argument("--val", required=True)
  s.add_argument("--workdir", required=True)
  s.add_argument("--gguf", default=None)
  s.add_argument("--chat", action="store_true")
  s.add_argument("--lora-rank", type=int, default=0, help="0: full fine-tuning")
  s.add_argument("--steps", type=int, default=200)
  s.add_argument("--batch", type=int, default=8)
  s.add_argument("--seq-len", type=int, default=256)
  s.add_argument("--lr", type=float, default=1e-4)
  s.add_argument("--warmup", type=int, default=10)
  s.add_argument("--eval-every", type=int, default=50)
  s.add_argument("--log-every", type=int, default=10)
  s.add_argument("--remat", action="store_true", help="gradient checkpointing")
  s.add_argument("--dtype", default="auto")
  s.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s",
                      datefmt="%H:%M:%S")
  logging.getLogger("s2gr_jax").setLevel(logging.INFO)
  import jax  # pylint: disable=g-import-not-at-top
  from s2gr_jax import errors  # pylint: disable=g-import-not-at-top
  from s2gr_jax import lm  # pylint: disable=g-import-not-at-top
  from s2gr_jax.lm import generate  # pylint: disable=g-import-not-at-top
  from s2gr_jax.lm import gguf_io  # pylint: disable=g-import-not-at-top
  from s2gr_jax.lm import sft  # pylint: disable=g-import-not-at-top
  from s2gr_jax.lm import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  from s2gr_jax.lm import weights  # pylint: disable=g-import-not-at-top
  try:
    if args.command == "generate":
      t0 = time.time()
      model, tok = lm.load_pretrained(args.gguf, dtype=_dtype(args.dtype))
      print(f"[loaded Gemma 3 ({model.num_params():,} parameters) in {time.time() - t0:.1f} s]",
            file=sys.stderr)
      text = tok.chat_prompt(args.prompt) if args.chat else args.prompt
      tokens, valid = generate.pad_prompts([tok.encode(text, add_bos=True)])
      t0 = time.time()
      if args.beam:
        seqs, _ = generate.beam_search(model, tokens, valid, beam=args.beam,
                                       max_new_tokens=args.max_new_tokens)
        out = seqs[0, 0]
      else:
        out = generate.generate(model, tokens, valid, jax.random.key(args.seed),
                                max_new_tokens=args.max_new_tokens,
                                greedy=not args.sample, temperature=args.temperature)[0]
      out = [int(t) for t in out.tolist()]
      if tok_lib.EOS in out:
        out = out[:out.index(tok_lib.EOS)]
      print(tok.decode(out, skip_special=True))
      print(f"[{len(out)} tokens in {time.time() - t0:.1f} s, compile included]",
            file=sys.stderr)
      return 0
    path = args.gguf or weights.fetch_gguf()
    cfg, params = gguf_io.load_gguf(path, dtype=_dtype(args.dtype), remat=args.remat,
                                    lora_rank=args.lora_rank)
    tok = tok_lib.Tokenizer.from_gguf(path)
    train = sft.read_jsonl(args.data, tok, args.chat)
    val = sft.read_jsonl(args.val, tok, args.chat)
    result, _ = sft.fine_tune(cfg, params, train, val, args.workdir,
                              batch_size=args.batch, seq_len=args.seq_len, lr=args.lr,
                              warmup=args.warmup, num_steps=args.steps,
                              log_every=args.log_every, eval_every=args.eval_every,
                              seed=args.seed)
    print(f"done: {result.step} steps, best validation at step {result.best_step} "
          f"(exp(-loss) {result.best_metric:.4f}); checkpoints in {args.workdir}")
    return 0
  except errors.InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
