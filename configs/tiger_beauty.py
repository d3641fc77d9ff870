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

Hardware, runtime and reached metrics of each preset: see the README results table,
which lists only runs that were made.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.amazon_recipe("beauty", "tiger", arg)
