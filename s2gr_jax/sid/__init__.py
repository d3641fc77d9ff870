"""Semantic IDs: item vectors → quantizer → SidTable (codes, de-dup level, prefix index)."""
