"""TIGER on Amazon Industrial & Scientific (2018 5-core), SPEC §0 protocol.

Paper recipe (default): T5 encoder–decoder 4+4 layers, d_model 128, 6×64 heads, MLP 1024,
dropout 0.1, hashed user token (2,000 buckets), history ≤ 20, batch 256, 200k steps;
SIDs = TIGER's RQ-VAE, 3×256 codes (+ de-dup level), over all-MiniLM-L6-v2 vectors of
the item text (title, brand, categories). Needs a GPU for the full run.
``--config.tokenizer.kind=coba|rqkmeans`` swaps the tokenizer,
``--config.tokenizer.embedding=text_tfidf|attributes`` the item vectors.

Commands:
  S2GR_DATA_DIR=../shared/data python -m s2gr_jax.main \\
      --config configs/tiger_scientific.py --workdir runs/tiger_scientific
  # the paper model at a reduced CPU budget (3,000 steps):
  ... --config configs/tiger_scientific.py:cpu --workdir runs/tiger_scientific_cpu
  # small models, 1,500 steps:
  ... --config configs/tiger_scientific.py:compare --workdir runs/cmp_tiger_scientific
  # a few minutes on a 2-core CPU (TF-IDF item vectors, RQ-KMeans, small model):
  ... --config configs/tiger_scientific.py:tiny --workdir /tmp/tiger_scientific_tiny

No run of this recipe has been made yet: there are no measured figures to give.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.amazon_recipe("scientific", "tiger", arg)
