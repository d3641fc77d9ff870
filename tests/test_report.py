"""Report labels and grouping follow the SIDs a run actually used."""

from s2gr_jax import config_lib
from s2gr_jax import report


def _run(seed, sid_tokenizer, from_workdir):
  config = config_lib.base_config()
  config.seed = seed
  config.tokenizer.kind = "rqvae"  # the recipe's own tokenizer, unused with from_workdir
  config.tokenizer.from_workdir = from_workdir
  sid = {"tokenizer": sid_tokenizer, "embedding": "text", "codebook_sizes": [256] * 3}
  return {"config": config.to_dict(), "sid": sid}


def test_label_names_the_reused_tokenizer():
  assert report.label(_run(0, "rqkmeans", "runs/tok_rqkmeans")) == "tiger · rqkmeans"
  assert report.label({"config": config_lib.base_config().to_dict(), "sid": None}) == (
      "tiger · rqkmeans")


def test_seeds_merge_but_different_sids_do_not():
  a = _run(0, "coba", "runs/tok_coba_a")
  b = _run(1, "coba", "runs/tok_coba_b")
  c = _run(0, "rqkmeans", "runs/tok_rqkmeans")
  assert report.group_key(a) == report.group_key(b)
  assert report.group_key(a) != report.group_key(c)
