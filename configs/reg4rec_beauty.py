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

Measured (2-core x86 CPU shared by 2-3 jobs, 2026-12-06; docs/results.md): ``:converge``
with ``--config.train.num_steps=2000`` (3.9 epochs; 46-48 min of training a seed while
shared), 3 seeds, test R@10 0.0294 +- 0.0005, N@10 0.0149 +- 0.0003, against TIGER at the
same budget 0.0328 +- 0.0004 / 0.0166 +- 0.0003 (both still rising at step 2,000); the
full ``:converge`` (about 90 min a seed) has not been run. ``:converge_grpo`` with the same
2,000 supervised steps (2026-12-07, 3 seeds, code 91ee8ad / c1069c0): held-out SFT 0.0262 ±
0.0002 / 0.0131 ± 0.0002 -> + 600 GRPO steps 0.0307 ± 0.0001 / 0.0155 ± 0.0000 (TIGER
0.0389 / 0.0192). Widened to d_model 128 (full data, 2,000 steps, seeds 0-1): REG4Rec
0.0331 / 0.0169, TIGER on these MPQ tokens 0.0344 / 0.0173, TIGER on its RQ-VAE tokens
0.0403 / 0.0199. Last-item floor 0.0717 / 0.0460. MPQ variants at that budget (2026-12-07,
eighth session): balancing off 0.0323 / 0.0165 (seed 0), mixed codebook sizes
``--config.tokenizer.mpq.codebook_sizes="(16,64,256,256)"`` 0.0324 / 0.0157 (seeds 0-1):
none closes the gap (docs/results.md, eighth session). At d_model 128, 3 seeds (ninth
session): this recipe 0.0331 +- 0.0003 / 0.0168 +- 0.0003;
``--config.model.reg4rec.targets=next`` 0.0348 +- 0.0007 / 0.0174 +- 0.0002, the better
setting on Beauty (validation agrees); TIGER 0.0402 +- 0.0003 / 0.0199 +- 0.0003.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.amazon_recipe("beauty", "reg4rec", arg)
