"""REG4Rec on Amazon Beauty, SPEC §0 protocol (issue 16).

Default recipe: TIGER's encoder–decoder (4+4 layers, d_model 128, 6×64 heads, MLP 1024,
dropout 0.1, hashed user token, history ≤ 20, batch 256, 200k steps: a GPU job) over
REG4Rec's MPQ tokens: 4 parallel, unordered codebooks of 256 codes (+ de-dup) over
all-MiniLM-L6-v2 vectors of the item text; order-agnostic training, the
confidence-ordered search (CRSS). Ablations:
``--config.model.reg4rec.order=fixed``, ``--config.model.reg4rec.corp=True`` (CORP is off
in the recipes: validation prefers it off),
``--config.tokenizer.mpq.experts=8``, ``--config.model.reg4rec.expand=all_codebooks``
(with ``.merge=logsumexp|max``).

Commands:
  S2GR_DATA_DIR=../shared/data python -m s2gr_jax.main \\
      --config configs/reg4rec_beauty.py --workdir runs/reg4rec_beauty
  # small models until validation NDCG@10 stops improving (the CPU budget of issue 14):
  ... --config configs/reg4rec_beauty.py:converge --workdir runs/conv_reg4rec_beauty
  # small models, 1,500 steps:
  ... --config configs/reg4rec_beauty.py:compare --workdir runs/cmp_reg4rec_beauty
  # a few minutes on a 2-core CPU (TF-IDF item vectors, MPQ 300 steps, small model):
  ... --config configs/reg4rec_beauty.py:tiny --workdir /tmp/reg4rec_beauty_tiny

Measured: not yet on this dataset (a ``:converge`` seed is about 90 min on 2 CPU cores);
the Scientific rows are in ``configs/reg4rec_scientific.py`` and docs/results.md.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.amazon_recipe("beauty", "reg4rec", arg)
