"""Default recipe: S²GR on the built-in synthetic dataset (no files, no network).

A catalogue of 1,000 items in an 8 × 8 category hierarchy and 2,000 users whose
sequences follow it (``s2gr_jax/data/synthetic.py`` says what a model must learn); SIDs
by RQ-KMeans (3 × 64 codes) over TF-IDF/SVD vectors of the item attributes; a small
S²GR (2+2 layers, d_model 64, one thought per level, anchor of 1 layer) trained for
1,200 steps of batch 256 (26 epochs), validation every 300. ``:tiny`` is a smaller
catalogue and TIGER (tests).

Command:
  python -m s2gr_jax.main --config configs/default.py --workdir runs/default
  # TIGER on the same data: --config.model.name=tiger

Measured (seed 0; 2-core x86 CPU, no accelerator, jax 0.10.2; 2026-12-02, commit
1b677ff), from a fresh clone with an empty compilation cache: 4 min 38 s for the job
(training 259 s, of which compilation 49 s; the venv and install before it took 45 s
with a warm pip cache). Test (2,000 users, 1,000 items) R@10 0.1560, N@10 0.0772;
popularity 0.0375 / 0.0182, the last-item transition floor 0.2725 / 0.1755, history
transitions 0.3020 / 0.1816: the learned row is below both transition rows (TIGER at
this recipe: 0.1910 / 0.0932). docs/results.md has every run of it and the analysis.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.synthetic_recipe(arg)
