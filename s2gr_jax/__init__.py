"""s2gr_jax."""
