"""TIGER on Amazon Beauty (2014 5-core, S3-Rec preprocessing), SPEC §0 protocol.

Paper recipe (default): T5 encoder–decoder 4+4 layers, d_model 128, 6×64 heads, MLP 1024,
dropout 0.1, hashed user token (2,000 buckets), history ≤ 20, batch 256, 200k steps;
SIDs = TIGER's RQ-VAE, 3×256 codes (+ de-dup level), over all-MiniLM-L6-v2 vectors of
the item text (title, brand, categories). Needs a GPU for the full run.
``--config.tokenizer.kind=coba`` swaps in S²GR's tokenizer, ``rqkmeans`` residual
k-means; ``--config.tokenizer.embedding=text_tfidf|attributes`` other item vectors.

Commands:
  S2GR_DATA_DIR=../shared/data python -m s2gr_jax.main \\
      --config configs/tiger_beauty.py --workdir runs/tiger_beauty
  # the CPU budget run recorded in the README (same model, fewer steps):
  S2GR_DATA_DIR=../shared/data python -m s2gr_jax.main \\
      --config configs/tiger_beauty.py:cpu --workdir runs/tiger_beauty_cpu
  # a few minutes on a 2-core CPU (TF-IDF item vectors, RQ-KMeans, small model, short
  # training), e.g. for smoke tests:
  S2GR_DATA_DIR=../shared/data python -m s2gr_jax.main \\
      --config configs/tiger_beauty.py:tiny --workdir /tmp/tiger_beauty_tiny

Hardware, runtime and reached metrics of each preset: see the README results table,
which lists only runs that were made.
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  c = config_lib.base_config()
  c.data.name = "beauty"
  c.data.length_buckets = (3, 5, 8, 12, 20)
  c.tokenizer.embedding = "text"
  c.tokenizer.kind = "rqvae"
  c.train.update(batch_size=256, num_steps=200_000, lr=1e-3, warmup_steps=10_000,
                 log_every=200, eval_every=5_000, checkpoint_every=5_000, patience=10)
  c.eval.update(batch_size=256, beam_size=20, val_users=5_000)

  def cpu(c):
    c.train.update(num_steps=3_000, lr=2e-3, warmup_steps=300, log_every=50,
                   eval_every=500, checkpoint_every=250, patience=4)
    c.eval.val_users = 3_000

  def tiny(c):  # minutes on a CPU: fast item vectors and tokenizer, a small model
    c.tokenizer.update(embedding="text_tfidf", embedding_dim=64, kind="rqkmeans")
    c.model.update(d_model=64, num_heads=4, head_dim=16, d_ff=256, encoder_layers=2,
                   decoder_layers=2)
    c.train.update(num_steps=300, lr=3e-3, warmup_steps=30, log_every=50,
                   eval_every=150, checkpoint_every=150)
    c.eval.val_users = 1_000

  return config_lib.apply_preset(c, arg, {"cpu": cpu, "tiny": tiny})
