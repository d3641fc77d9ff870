"""TIGER on Amazon Beauty (2014 5-core, S3-Rec preprocessing), SPEC §0 protocol.

Paper recipe (default): T5 encoder–decoder 4+4 layers, d_model 128, 6×64 heads, MLP 1024,
dropout 0.1, hashed user token (2,000 buckets), history ≤ 20, batch 256, 200k steps;
SIDs = TIGER's RQ-VAE, 3×256 codes (+ de-dup level), over all-MiniLM-L6-v2 vectors of
the item text (title, brand, categories). Needs a GPU for the full run.
``--config.tokenizer.kind=coba|rqkmeans`` swaps the tokenizer,
``--config.tokenizer.embedding=text_tfidf|attributes`` the item vectors.

Commands:
  S2GR_DATA_DIR=../shared/data python -m s2gr_jax.main \\
      --config configs/tiger_beauty.py --workdir runs/tiger_beauty
  # the paper model at a reduced CPU budget (3,000 steps):
  ... --config configs/tiger_beauty.py:cpu --workdir runs/tiger_beauty_cpu
  # small models, 1,500 steps: the README's comparison budget (CoBa SIDs from
  # configs/tokenize_beauty.py):
  ... --config configs/tiger_beauty.py:compare \\
      --config.tokenizer.from_workdir=runs/tokenize_beauty_coba --workdir runs/cmp_tiger
  # a few minutes on a 2-core CPU (TF-IDF item vectors, RQ-KMeans, small model):
  ... --config configs/tiger_beauty.py:tiny --workdir /tmp/tiger_beauty_tiny

Measured (2-core x86 CPU, no accelerator, jax 0.10.2): ``:tiny`` 2 min 4 s end to end
(dataset already built, warm compilation cache; 2026-12-01), test R@10 0.0083, N@10
0.0043 (a smoke preset: below popularity, 0.0114); ``:compare`` on CoBa SIDs, seeds 0
and 1: R@10 0.0344 ± 0.0022, N@10 0.0171 ± 0.0009, 7–13 min of training each. The paper
budget and ``:cpu`` have not been run. ``:converge_grpo`` with 2,000 supervised steps
(3.9 epochs; 2026-12-07, 3 seeds): held-out SFT 0.0307 ± 0.0004 / 0.0151 ± 0.0002
-> + 600 GRPO steps 0.0389 ± 0.0009 / 0.0192 ± 0.0006 (R@10 / N@10; +27 % / +27 %
over SFT, 7 % over the NLL-only control).
docs/results.md has every run with its command.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.amazon_recipe("beauty", "tiger", arg)
