"""S²GR on Amazon Beauty (2014 5-core, S3-Rec preprocessing), SPEC §0 protocol.

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
      --config configs/s2gr_beauty.py --workdir runs/s2gr_beauty              # paper budget, GPU
  ... --config configs/s2gr_beauty.py:cpu --workdir runs/s2gr_beauty_cpu     # reduced CPU budget
  ... --config configs/s2gr_beauty.py:compare --workdir runs/cmp_s2gr_beauty # small, 1,500 steps
  ... --config configs/s2gr_beauty.py:tiny --workdir /tmp/s2gr_beauty_tiny   # minutes on a CPU

Measured (2-core x86 CPU, no accelerator, jax 0.10.2; CoBa SIDs from
configs/tokenize_beauty.py via --config.tokenizer.from_workdir): ``:compare`` (1,500
steps), seeds 0 and 1: test R@10 0.0304 ± 0.0003, N@10 0.0149 ± 0.0002, 10–11 min of
training each — below TIGER at the same budget; at 5,000 steps (seed 0) R@10 0.0382,
N@10 0.0184 in 33 min. The paper budget needs a GPU and has not been run.
``:converge_grpo`` with 2,000 supervised steps (3.9 epochs; 2026-12-07, 3 seeds):
held-out SFT 0.0311 ± 0.0009 / 0.0151 ± 0.0005 -> + 600 GRPO steps
0.0384 ± 0.0005 / 0.0189 ± 0.0004 (R@10 / N@10; +23 % / +25 % over
SFT, 6 % over the NLL-only control).
docs/results.md has every run with its command.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.amazon_recipe("beauty", "s2gr", arg)
