"""The reinforcement stage: GRPO over catalogue-constrained paths (``grpo``) with the
rewards of REG4Rec and SIDReasoner (``rewards``); the ``rl`` stage is in ``stages.py``."""
