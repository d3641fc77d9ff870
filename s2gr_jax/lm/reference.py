"""The reference check: our Gemma 3 270M against llama.cpp on the same GGUF.

    pip install llama-cpp-python      # the independent implementation (not a dependency)
    python -m s2gr_jax.lm.reference --out tests/data/gemma3_270m_reference.json

Compares token ids of ``STRINGS`` (ours vs llama.cpp's tokenizer), next-token logits
after each of ``PROMPTS`` (largest absolute difference over the whole vocabulary,
top-5 agreement) and greedy continuations of ``GREEDY`` prompts, twice: on the Q4_K_M
file itself (llama.cpp multiplies by the quantised blocks with 8-bit activations, we
dequantise to float32, so logits differ by up to ~1.5 and near-ties can flip), and on
a float32 copy of the same file (``write_f32_copy``: exactly our weights, so any
difference is the architecture's). Prints both and records the float32 comparison
(token ids, llama.cpp's top-5 ids and logits a prompt, a tolerance of 3× the largest
difference measured) as the reference ``tests/test_lm.py`` checks the model against.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

STRINGS = [
    "Hello world", "The meaning to life and the universe is", "  two  spaces",
    "tabs\tand\nnewlines\n\n", "naïve café", "東京タワー", "Москва", "مرحبا بالعالم",
    "emoji 🙂🚀", "1234567890", "3.14159 2.71828", "x = f(y) + 2 * z", "def foo(bar):",
    "<html><body>hi</body></html>", "https://example.com/a?b=c&d=e", "email@domain.org",
    "CamelCaseWordsHere", "snake_case_words_here", "ALL CAPS SENTENCE.", "mIxEd CaSe",
    "don't won't can't", "“quotes” and ‘apostrophes’", "em—dash and en–dash", "…",
    "a", " leading space", "trailing space ", "multiple   spaces   here", "\n",
    "Nitrile gloves, powder-free, size M (100 count)", "Lab-grade beaker 250 mL",
    "Safety goggles ANSI Z87.1", "Moisturizing cream with SPF 30", "Hyaluronic acid serum",
    "Matte lipstick — shade #12", "Item <a_12><b_200><c_3>", "<a_1> <b_2>", "α β γ δ",
    "Ünïcödé", "ß and ẞ", "ﬁ ligature", "中文和English混合", "한국어 텍스트", "ไทย",
    "hindi हिन्दी", "a\u00a0non-breaking space", "zero\u200bwidth", "((nested (parens)))",
    "C:\\path\\to\\file.txt", "$100.00 or €85,50", "50% off!!!", "#hashtag @mention",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
]
PROMPTS = [
    "The capital of France is", "def fibonacci(n):", "Once upon a time",
    "The best way to learn a language is", "Water boils at", "1, 2, 3, 4,",
    "<start_of_turn>user\nWhat is the boiling point of water?<end_of_turn>\n"
    "<start_of_turn>model\n",
    "A customer who bought nitrile gloves and a lab beaker will next buy",
]
GREEDY = ["The capital of France is", "Once upon a time", "def add(a, b):"]


def write_f32_copy(src: str, dst: str) -> None:
  """``src`` with every tensor dequantised to float32 (same metadata and vocabulary):
  what our model computes with, so llama.cpp on it checks the architecture alone."""
  import gguf  # pylint: disable=g-import-not-at-top
  reader = gguf.GGUFReader(src)
  writer = gguf.GGUFWriter(dst, "gemma3")
  for name, field in reader.fields.items():
    if name.startswith("GGUF.") or name == "general.architecture":
      continue  # (the writer adds them)
    if name == "general.file_type":
      writer.add_key_value(name, 0, gguf.GGUFValueType.UINT32)  # all F32
      continue
    vtype = field.types[0]
    sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
    writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
  for t in reader.tensors:
    writer.add_tensor(t.name, np.asarray(gguf.quants.dequantize(t.data, t.tensor_type),
                                         np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def compare(model, tok, path: str, greedy_tokens: int) -> dict:
  """The figures of the module docstring for llama.cpp on ``path``; prints them."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from llama_cpp import Llama  # pylint: disable=g-import-not-at-top
  from s2gr_jax.lm import generate  # pylint: disable=g-import-not-at-top
  ref = Llama(path, n_ctx=512, logits_all=True, verbose=False, n_threads=2)
  same, tokenize = 0, []
  for text in STRINGS:
    ours = tok.encode(text)
    theirs = ref.tokenize(text.encode(), add_bos=False, special=True)
    same += ours == theirs
    if ours != theirs:
      print(f"  tokens differ on {text!r}: ours {ours} llama.cpp {theirs}")
    tokenize.append({"text": text, "ids": theirs})
  print(f"token ids equal on {same}/{len(STRINGS)} strings")
  forward = jax.jit(lambda m, t: m(t)[0])  # (the model an argument, not a constant)
  worst, top5, top1, cases = 0.0, [], 0, []
  for prompt in PROMPTS:
    ids = tok.encode(prompt, add_bos=True)
    ref.reset()
    ref.eval(ids)
    theirs = np.asarray(ref.scores[len(ids) - 1], np.float32)
    ours = np.asarray(forward(model, jnp.asarray([ids]))[-1], np.float32)
    diff = float(np.abs(ours - theirs).max())
    worst = max(worst, diff)
    a, b = np.argsort(-theirs)[:5], np.argsort(-ours)[:5]
    top5.append(len(set(a) & set(b)))
    top1 += int(a[0] == b[0])
    print(f"  {prompt[:40]!r}: max |Δlogit| {diff:.3f} (top logit {theirs[a[0]]:.2f}), "
          f"top-5 shared {top5[-1]}/5, top-1 {'=' if a[0] == b[0] else '≠'}")
    cases.append({"prompt": prompt, "ids": ids, "top_ids": a.tolist(),
                  "top_logits": theirs[a].tolist()})
  print(f"next-token logits: largest |Δ| {worst:.3f} over the vocabulary; top-5 "
        f"agreement {np.mean(top5) / 5:.0%}; top-1 equal on {top1}/{len(PROMPTS)}")
  greedy_same = 0
  for prompt in GREEDY:
    ids = tok.encode(prompt, add_bos=True)
    tokens, valid = generate.pad_prompts([ids])
    ours = generate.generate(model, tokens, valid, jax.random.key(0),
                             max_new_tokens=greedy_tokens, eos=-1)[0].tolist()
    theirs = []
    for t in ref.generate(ids, top_k=1, top_p=1.0, temp=0.0, reset=True):
      theirs.append(int(t))
      if len(theirs) == greedy_tokens:
        break
    greedy_same += ours == theirs
    print(f"  greedy {prompt!r}: {'equal' if ours == theirs else 'DIFFER'}: "
          f"{tok.decode(ours)!r}" + ("" if ours == theirs else f" vs {tok.decode(theirs)!r}"))
  print(f"greedy continuations ({greedy_tokens} tokens) equal on "
        f"{greedy_same}/{len(GREEDY)}")
  return {"tokenize": tokenize, "next_token": cases,
          "figures": {"tokens_equal": f"{same}/{len(STRINGS)}",
                      "max_abs_logit_diff": round(worst, 4),
                      "top5_agreement": float(np.mean(top5) / 5),
                      "top1_equal": f"{top1}/{len(PROMPTS)}",
                      "greedy_equal": f"{greedy_same}/{len(GREEDY)}"}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gguf", default=None, help="default: the fetched 270M GGUF")
  parser.add_argument("--out", default=None, help="write the recorded reference here")
  parser.add_argument("--greedy-tokens", type=int, default=16)
  args = parser.parse_args(argv)
  import tempfile  # pylint: disable=g-import-not-at-top
  from s2gr_jax import lm  # pylint: disable=g-import-not-at-top
  from s2gr_jax.lm import weights  # pylint: disable=g-import-not-at-top
  path = args.gguf or weights.fetch_gguf()
  t0 = time.time()
  model, tok = lm.load_pretrained(path)
  print(f"ours: loaded {model.num_params():,} parameters in {time.time() - t0:.1f} s")
  print(f"== llama.cpp on the quantised file itself ({path})")
  quantised = compare(model, tok, path, args.greedy_tokens)
  with tempfile.TemporaryDirectory() as tmp:
    f32 = f"{tmp}/f32.gguf"
    write_f32_copy(path, f32)
    print("== llama.cpp on the same weights dequantised to float32 (what we compute with)")
    exact = compare(model, tok, f32, args.greedy_tokens)
  if args.out:
    record = {"gguf_sha256": weights.GGUF_SHA256, "reference": "llama.cpp "
              "(llama-cpp-python) on the float32 copy", "tokenize": exact["tokenize"],
              "next_token": exact["next_token"],
              "logit_tolerance": round(max(0.05, 3 * exact["figures"]["max_abs_logit_diff"]),
                                       3),
              "figures": {"float32_copy": exact["figures"],
                          "q4_k_m_file": quantised["figures"]}}
    with open(args.out, "w") as f:
      json.dump(record, f, indent=1, ensure_ascii=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
