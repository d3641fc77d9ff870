"""REG4Rec on Amazon Scientific, SPEC §0 protocol (issue 16).

Default recipe: TIGER's encoder–decoder (4+4 layers, d_model 128, 6×64 heads, MLP 1024,
dropout 0.1, hashed user token, history ≤ 20, batch 256, 200k steps: a GPU job) over
REG4Rec's MPQ tokens: 4 parallel, unordered codebooks of 256 codes (+ de-dup) over
all-MiniLM-L6-v2 vectors of the item text; order-agnostic training, the
confidence-ordered search (CRSS) with consistency pruning (CORP). Ablations:
``--config.model.reg4rec.order=fixed``, ``--config.model.reg4rec.corp=False``,
``--config.tokenizer.mpq.experts=8``, ``--config.model.reg4rec.expand=all_codebooks``
(with ``.merge=logsumexp|max``).

Commands:
  S2GR_DATA_DIR=../shared/data python -m s2gr_jax.main \\
      --config configs/reg4rec_scientific.py --workdir runs/reg4rec_scientific
  # small models until validation NDCG@10 stops improving (the CPU budget of issue 14):
  ... --config configs/reg4rec_scientific.py:converge --workdir runs/conv_reg4rec_scientific
  # small models, 1,500 steps:
  ... --config configs/reg4rec_scientific.py:compare --workdir runs/cmp_reg4rec_scientific
  # a few minutes on a 2-core CPU (TF-IDF item vectors, MPQ 300 steps, small model):
  ... --config configs/reg4rec_scientific.py:tiny --workdir /tmp/reg4rec_scientific_tiny

Measured: not yet on this dataset (the first REG4Rec rows are on the built-in synthetic
data, docs/results.md); the converged runs are the next step of issue 16.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.amazon_recipe("scientific", "reg4rec", arg)
