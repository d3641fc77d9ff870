"""TFDS builders (array_record, no TensorFlow) for sequence datasets."""

from s2gr_jax.data.builders.sequences import AmazonSequences
from s2gr_jax.data.builders.sequences import AmazonSequencesConfig
from s2gr_jax.data.builders.sequences import SyntheticSequences
from s2gr_jax.data.builders.sequences import SyntheticSequencesConfig

__all__ = ["AmazonSequences", "AmazonSequencesConfig", "SyntheticSequences",
           "SyntheticSequencesConfig"]
