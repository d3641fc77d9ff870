"""Default recipe: TIGER on the built-in synthetic dataset (no files, no network).

Command:
  python -m s2gr_jax.main --config configs/default.py --workdir /tmp/s2gr_default

Hardware, runtime and metrics: see the README results table (filled from real runs).
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  c = config_lib.base_config()
  c.data.name = "synthetic"
  c.tokenizer.embedding = "attributes"
  c.tokenizer.embedding_dim = 32
  c.tokenizer.codebook_size = 64
  c.model.update(d_model=64, num_heads=4, head_dim=16, d_ff=256, encoder_layers=2,
                 decoder_layers=2, dropout=0.1)
  c.train.update(batch_size=128, num_steps=1000, lr=3e-3, warmup_steps=100,
                 log_every=100, eval_every=500, checkpoint_every=500, patience=3)
  c.eval.update(batch_size=256)

  def tiny(c):
    c.data.synthetic.update(num_users=300, num_items=200)
    c.tokenizer.codebook_size = 16
    c.model.update(d_model=32, num_heads=2, head_dim=16, d_ff=64, encoder_layers=1,
                   decoder_layers=1)
    c.train.update(batch_size=32, num_steps=40, warmup_steps=5, log_every=10,
                   eval_every=20, checkpoint_every=20)
    c.eval.update(batch_size=64)

  return config_lib.apply_preset(c, arg, {"tiny": tiny})
