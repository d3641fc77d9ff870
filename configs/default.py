"""Default recipe: TIGER on the built-in synthetic dataset (no files, no network).

A catalogue of 1,000 items in an 8 × 8 category hierarchy and 2,000 users whose
sequences follow it (``s2gr_jax/data/synthetic.py``); SIDs by RQ-KMeans (3 × 64 codes)
over TF-IDF/SVD vectors of the item attributes; a small TIGER (2+2 layers, d_model 64)
trained for 1,000 steps. ``:tiny`` is smaller still (tests).

Command:
  python -m s2gr_jax.main --config configs/default.py --workdir runs/default
  # S²GR on the same data: --config.model.name=s2gr

Measured (seed 0; 2-core x86 CPU, no accelerator, jax 0.10.2; 2026-12-01): 86 s for the
run with a warm compilation cache (training 78 s); test (2,000 users, 1,000 items)
R@10 0.1400, N@10 0.0661, against popularity 0.0215 / 0.0101 and the last-item
transition floor 0.2445 / 0.1549. docs/results.md has every run of it.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.synthetic_recipe(arg)
