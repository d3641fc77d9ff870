"""SASRec on Amazon Industrial & Scientific (2018 5-core; LC-Rec-style papers' "Scientific"), SPEC §0 protocol: the baseline row.

A causal transformer over item ids (2 layers, d 64, 2 heads, MLP 256, dropout 0.2),
full-softmax cross-entropy, ranking the whole catalogue by dot product (no Semantic IDs);
its fields are ``config.model.sasrec.*``.

Commands:
  S2GR_DATA_DIR=../shared/data python -m s2gr_jax.main \\
      --config configs/sasrec_scientific.py --workdir runs/sasrec_scientific              # paper budget
  ... --config configs/sasrec_scientific.py:cpu --workdir runs/sasrec_scientific_cpu     # reduced CPU budget
  ... --config configs/sasrec_scientific.py:converge --workdir runs/conv_sasrec_scientific # early stop
  ... --config configs/sasrec_scientific.py:compare --workdir runs/cmp_sasrec_scientific # 1,500 steps
  ... --config configs/sasrec_scientific.py:tiny --workdir /tmp/sasrec_scientific_tiny   # minutes on a CPU

Measured (``:converge``, seeds 0, 1, 2, 2-core x86 CPU, no accelerator, jax 0.10.2, code
of 8d31a81, 2026-12-02; positions from the end): best validation at steps 1,500 / 2,500
/ 1,000, early stop 4 validations later, 89–139 s of training; test R@10 0.0852 ±
0.0017, N@10 0.0620 ± 0.0011 (mean ± s.e.; untuned), against the last-item floor 0.0940
/ 0.0711 and history transitions 0.1074 / 0.0786: below both. With
``--config.model.sasrec.positions=from_start`` (code of 704bb3c): 0.0830 ± 0.0011 /
0.0598 ± 0.0005. docs/results.md has the runs.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.amazon_recipe("scientific", "sasrec", arg)
