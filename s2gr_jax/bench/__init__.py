"""Benchmarks (not tests): ``python -m s2gr_jax.bench --suite NAME --out FILE.json``."""
