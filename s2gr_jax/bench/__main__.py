"""``python -m s2gr_jax.bench --suite models --out bench.json``: see ``cli.py``."""

from s2gr_jax.bench import cli

if __name__ == "__main__":
  cli.main()
