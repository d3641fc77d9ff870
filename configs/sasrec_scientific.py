"""SASRec on Amazon Industrial & Scientific (2018 5-core; LC-Rec-style papers' "Scientific"), SPEC §0 protocol: the baseline row.

A causal transformer over item ids (2 layers, d 64, 2 heads, MLP 256, dropout 0.2),
full-softmax cross-entropy, ranking the whole catalogue by dot product (no Semantic IDs);
its fields are ``config.model.sasrec.*``.

Commands:
  S2GR_DATA_DIR=../shared/data python -m s2gr_jax.main \\
      --config configs/sasrec_scientific.py --workdir runs/sasrec_scientific              # paper budget
  ... --config configs/sasrec_scientific.py:cpu --workdir runs/sasrec_scientific_cpu     # reduced CPU budget
  ... --config configs/sasrec_scientific.py:compare --workdir runs/cmp_sasrec_scientific # 1,500 steps
  ... --config configs/sasrec_scientific.py:tiny --workdir /tmp/sasrec_scientific_tiny   # minutes on a CPU

No run of this recipe has been made yet: there are no measured figures to give.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.amazon_recipe("scientific", "sasrec", arg)
