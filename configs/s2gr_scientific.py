"""S²GR on Amazon Industrial & Scientific (2018 5-core; LC-Rec-style papers' "Scientific"), SPEC §0 protocol.

TIGER's backbone (4+4 layers, d_model 128, 6×64 heads, MLP 1024, dropout 0.1) with one
continuous thought before each SID level, supervised by k-means clusters (16) of that
level's codebook (InfoNCE, τ 0.1), the first thought anchored to a half-depth auxiliary
decoder (λ 0.1); SIDs from the CoBa RQ-VAE over all-MiniLM-L6-v2 item-text vectors.
Ablations by flag: --config.model.s2gr.thoughts_per_level=0 (TIGER),
--config.model.s2gr.align_weight=0, --config.model.s2gr.anchor_layers=0,
--config.model.s2gr.num_clusters=K, --config.model.s2gr.align_temperature=T,
--config.model.s2gr.reg_weight=L, --config.tokenizer.kind=rqvae (plain RQ-VAE).

Commands:
  S2GR_DATA_DIR=../shared/data python -m s2gr_jax.main \\
      --config configs/s2gr_scientific.py --workdir runs/s2gr_scientific              # paper budget, GPU
  ... --config configs/s2gr_scientific.py:cpu --workdir runs/s2gr_scientific_cpu     # reduced CPU budget
  ... --config configs/s2gr_scientific.py:converge --workdir runs/conv_s2gr_scientific # small, early stop
  ... --config configs/s2gr_scientific.py:converge_grpo --workdir runs/grpo_s2gr_sci  # + GRPO
  ... --config configs/s2gr_scientific.py:compare --workdir runs/cmp_s2gr_scientific # small, 1,500 steps
  ... --config configs/s2gr_scientific.py:tiny --workdir /tmp/s2gr_scientific_tiny   # minutes on a CPU

Measured (``:converge``, seed 0, 2-core x86 CPU shared with other jobs, no accelerator,
jax 0.10.2, code of 704bb3c, 2026-12-01): best validation at step 5,500 (42 epochs; val
N@10 0.0573, TIGER's 0.0546), early stop at 7,500; 32 min of training (compile 173 s,
validation 56 s); test R@10 0.0582, N@10 0.0346 (TIGER's converged run 0.0612 / 0.0356),
against the last-item floor 0.0940 / 0.0711 and history transitions 0.1074 / 0.0786:
below both. With ``--config.model.s2gr.align_weight=0.1
--config.model.s2gr.nce_weight=0.1``: best at 2,000, stop at 4,000, 16 min; test 0.0616
/ 0.0359 (level with TIGER). With ``--config.model.s2gr.recency_embeddings=True`` (code
of 8d31a81): with the auxiliary weights at 0.1 too, test 0.0671 / 0.0409, 28 min.
``:converge_grpo`` (commit 3da6ae4, 3 seeds, 16-21 + 13-16 min a seed, shared CPU):
held-out SFT 0.0549 ± 0.0021 / 0.0331 ± 0.0015, + GRPO 0.0703 ± 0.0013 / 0.0421 ± 0.0007.
docs/results.md has the runs and why.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.amazon_recipe("scientific", "s2gr", arg)
