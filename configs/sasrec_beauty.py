"""SASRec on Amazon Beauty (2014 5-core, S3-Rec preprocessing), SPEC §0 protocol: the baseline row.

A causal transformer over item ids (2 layers, d 64, 2 heads, MLP 256, dropout 0.2),
full-softmax cross-entropy, ranking the whole catalogue by dot product (no Semantic IDs);
its fields are ``config.model.sasrec.*``.

Commands:
  S2GR_DATA_DIR=../shared/data python -m s2gr_jax.main \\
      --config configs/sasrec_beauty.py --workdir runs/sasrec_beauty              # paper budget
  ... --config configs/sasrec_beauty.py:cpu --workdir runs/sasrec_beauty_cpu     # reduced CPU budget
  ... --config configs/sasrec_beauty.py:compare --workdir runs/cmp_sasrec_beauty # 1,500 steps
  ... --config configs/sasrec_beauty.py:tiny --workdir /tmp/sasrec_beauty_tiny   # minutes on a CPU

Measured (seed 0, 2-core x86 CPU, no accelerator, jax 0.10.2): ``:compare`` (1,500
steps) test R@5 0.0257, N@5 0.0159, R@10 0.0439, N@10 0.0217 in 2.4 min of training,
still improving at its last validation (positions from the start, the code then).
``:converge`` (seed 0, same machine, 2026-12-02, code of 8d31a81, positions from the
end): best at step 6,000 (19 epochs at the early stop), 11 min of training; test R@10
0.0657, N@10 0.0364; with positions from the start (code of 704bb3c) 0.0635 / 0.0374.
Last-item floor 0.0717 / 0.0460, history transitions 0.0784 / 0.0483. The other presets
have not been run.
docs/results.md has every run with its command.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.amazon_recipe("beauty", "sasrec", arg)
