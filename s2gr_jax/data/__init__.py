"""Datasets: prepared-format readers, TFDS builders, Grain pipelines."""
