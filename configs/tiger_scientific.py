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
  # small models until validation NDCG@10 stops improving (early stopping, ≤ 8,000 steps):
  ... --config configs/tiger_scientific.py:converge --workdir runs/conv_tiger_scientific
  # the same without each user's last training item, then GRPO on those items (600 steps):
  ... --config configs/tiger_scientific.py:converge_grpo --workdir runs/grpo_tiger_scientific
  # small models, 1,500 steps:
  ... --config configs/tiger_scientific.py:compare --workdir runs/cmp_tiger_scientific
  # a few minutes on a 2-core CPU (TF-IDF item vectors, RQ-KMeans, small model):
  ... --config configs/tiger_scientific.py:tiny --workdir /tmp/tiger_scientific_tiny

Measured (``:converge``, seed 0, 2-core x86 CPU shared with other jobs, no accelerator,
jax 0.10.2, code of 704bb3c, 2026-12-01): best validation at step 3,000 (22.9 epochs),
early stop at 5,000; 22 min of training (compile 154 s, validation 31 s); test R@10
0.0612, N@10 0.0356, against the last-item floor 0.0940 / 0.0711 and history transitions
0.1074 / 0.0786: below both. With ``--config.model.tiger.recency_embeddings=True`` (code
of 8d31a81): test 0.0659 / 0.0409 (seed 0; seed 1: 0.0642 / 0.0391), 12 min.
docs/results.md has the run and why.
``:converge_grpo`` (commit 2466ec7, 3 seeds, 17-24 + 8-17 min a seed, shared CPU): held-out
SFT 0.0534 ± 0.0019 / 0.0314 ± 0.0008, + GRPO 0.0711 ± 0.0011 / 0.0436 ± 0.0008
(+12 % / +14 % over the 3-seed ``:converge`` rows 0.0633 / 0.0382 of an earlier session).
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.amazon_recipe("scientific", "tiger", arg)
