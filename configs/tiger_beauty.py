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
  # the reduced CPU budget of the README's CPU rows (same model, 3,000 steps):
  ... --config configs/tiger_beauty.py:cpu --workdir runs/tiger_beauty_cpu
  # a few minutes on a 2-core CPU (TF-IDF item vectors, RQ-KMeans, small model):
  ... --config configs/tiger_beauty.py:tiny --workdir /tmp/tiger_beauty_tiny

Measured (seed 0, 2-core x86 CPU, no GPU yet): ``:tiny`` 3 min 32 s end to end, test
R@10 0.0093, N@10 0.0055 (a smoke preset); ``:compare`` on CoBa SIDs (from
configs/tokenize_beauty.py) R@10 0.0322, N@10 0.0162 at 1,500 steps and R@10 0.0433,
N@10 0.0211 at 5,000 steps (36 min); on RQ-VAE SIDs 0.0297 / 0.0141 at 1,500 steps.
The README results table lists every run with its command.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.amazon_recipe("beauty", "tiger", arg)
