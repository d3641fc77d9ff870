"""``python -m s2gr_jax.bench --suite models --out bench.json``: see ``suites.py``."""

from s2gr_jax.bench import suites

if __name__ == "__main__":
  suites.main()
