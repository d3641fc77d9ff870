"""The configuration schema shared by every recipe, and its validation.

Recipes (``configs/*.py``) start from ``base_config()`` and change values; presets
(``configs/x.py:tiny``) are structural variants chosen by ``get_config(arg)``. The config
is locked, so ``--config.train.stepz=1`` fails with "Did you mean steps"; ``validate``
then checks values and their combinations and names the key at fault.
"""

from __future__ import annotations

import difflib
import os

import ml_collections

from s2gr_jax import config_keys
from s2gr_jax import fileio
from s2gr_jax import models
from s2gr_jax import stages
from s2gr_jax.data import datasets
from s2gr_jax.sid import quantizers


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # The stages of a run, in order (s2gr_jax/stages.py); "tokenize" alone only builds SIDs.
  c.stages = "tokenize,train,evaluate"

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"  # 'synthetic' or a sub-folder of data.dir (beauty, ...)
  c.data.dir = os.environ.get(datasets.DATA_DIR_ENV, "")
  c.data.tfds_dir = ""  # where TFDS writes array_record; '' = $S2GR_TFDS_DIR or ~/.cache
  c.data.on_short_sequence = "error"  # or 'drop' (counted in the log)
  c.data.max_history = 20
  c.data.length_buckets = (5, 10, 20)  # history pad lengths; the last = max_history
  c.data.user_buckets = 2000
  c.data.num_threads = 2  # Grain read threads feeding the train step
  c.data.synthetic = ml_collections.ConfigDict(dict(
      num_users=2000, num_items=1000, branching=(8, 8), brands_per_top=4,
      min_length=5, mean_length=9.0, max_length=40, favourite_leaves=3,
      p_complement=0.15, p_same_leaf=0.2, p_favourite=0.55, tags_per_leaf=12, tags_per_item=3,
      noise_attribute_rate=0.3, complement_scope="related_leaf", seed=0))

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.embedding = "attributes"  # 'attributes' | 'text_tfidf' | 'text' | 'npy'
  c.tokenizer.embedding_path = ""  # for 'npy': float32[num_items, d], row i = item i + 1
  c.tokenizer.embedding_dim = 64  # SVD dimensions of the TF-IDF sources
  c.tokenizer.text_encoder_dir = ""  # for 'text': '' = $S2GR_TEXT_ENCODER_DIR or fetched
  c.tokenizer.kind = "rqkmeans"  # 'rqkmeans' | 'rqvae' (TIGER) | 'coba' (S²GR) | 'mpq'
  c.tokenizer.levels = 3
  c.tokenizer.codebook_size = 256
  c.tokenizer.kmeans_iters = 50  # RQ-KMeans, and the RQ-VAE codebook initialisation
  c.tokenizer.sinkhorn_last_level = False  # balanced (Sinkhorn) last-level assignment
  c.tokenizer.seed = 0
  c.tokenizer.rqvae = ml_collections.ConfigDict(dict(
      latent_dim=32, hidden=(512, 256, 128), steps=3000, batch_size=1024, lr=1e-3,
      commitment=0.25, init_items=20_000, log_every=250))
  # CoBa's switches (tokenizer.kind='coba'); 0 turns a part off.
  c.tokenizer.coba = ml_collections.ConfigDict(dict(
      window=3, propagation_hops=2, propagation_alpha=0.2, uniformity_weight=0.05,
      uniformity_percentile=10.0, balance_gamma=0.5, balance_eps=0.2, usage_decay=0.99,
      restart_every=100, restart_threshold=0.03))
  # REG4Rec's MPQ (tokenizer.kind='mpq'): `experts` parallel codebooks of
  # tokenizer.codebook_size codes each (tokenizer.levels is not used); CoBa's balancing
  # and restarts per codebook (0 turns them off). `combine` 'sum' (the paper's) |
  # 'concat' and `independence_weight` (mutual information between the experts' soft
  # assignments) are ours, against experts that learn the same partition (sid/mpq.py).
  # `codebook_sizes` (one per expert, e.g. (16, 64, 256, 256)) gives the codebooks
  # different sizes; empty: tokenizer.codebook_size each.
  c.tokenizer.mpq = ml_collections.ConfigDict(dict(
      experts=4, codebook_sizes=(), latent_dim=32, hidden=(256, 128), steps=3000,
      batch_size=1024, lr=1e-3,
      commitment=0.25, orthogonality_weight=0.1, combine="sum", independence_weight=0.0,
      independence_temperature=0.1, init_items=20_000, log_every=250,
      balance_gamma=0.5, balance_eps=0.2, usage_decay=0.99, restart_every=100,
      restart_threshold=0.03))
  c.tokenizer.from_workdir = ""  # reuse the SIDs of another run's workdir (same data)

  # model.name picks the model; model.<name> is its section, one per registered model
  # (s2gr_jax/models/__init__.py), each with the fields and defaults of its config
  # dataclass. Only the section of model.name is used.
  c.model = ml_collections.ConfigDict()
  c.model.name = "tiger"
  c.model.kernels = "auto"  # 'cpu' (XLA:CPU speed pieces) | 'plain' | 'auto' (by backend)
  for name in models.REGISTRY:
    c.model[name] = ml_collections.ConfigDict(models.section_defaults(name))
  # REG4Rec's CORP (the paper's default, and Reg4RecConfig's) is off in the recipes:
  # validation prefers it off on the synthetic data and on Amazon Scientific, where its
  # tokens' categories are ~60 % pure (docs/results.md); `=True` is the ablation row.
  c.model.reg4rec.corp = False

  # Start training (or evaluation) from another run's best checkpoint, when this workdir
  # has none of its own: same model config, same SIDs.
  c.init = ml_collections.ConfigDict(dict(from_workdir=""))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=256, num_steps=20_000, lr=1e-3, warmup_steps=1_000,
      end_lr_ratio=0.01, weight_decay=0.05, b1=0.9, b2=0.98, grad_clip=1.0,
      log_every=100, eval_every=1_000, checkpoint_every=1_000, patience=10,
      stop_at_step=-1, progress_bar=False,
      # True: skip each user's last training target (kept for rl.examples='last')
      hold_out_last=False,
      trainable=""))  # '' = every parameter; else a regex over parameter paths

  # The GRPO stage (s2gr_jax/rl/, stage 'rl'): `enabled` appends 'rl,evaluate' to the
  # stages, from this run's best checkpoint, or from `init_from` (another run's workdir:
  # its SIDs and best checkpoint; this run then skips 'train'). `rewards`: 'auto' (PARS
  # for REG4Rec, SIDReasoner's prefix reward for ordered SIDs) or 'name=weight,...' of
  # s2gr_jax/rl/rewards.py; MSRA: `msra_items` targets (the next item and the ones
  # after it in the training part), weights msra_decay^(k-1); msra_items=1 is MSRA off.
  # `rollout`: 'sample' (G paths drawn from the policy) or 'beam' (the G best items of
  # the constrained beam search, MiniOneRec's rollouts; the 'rank' reward needs them).
  # `validate_at_start`: score the supervised model on validation before the first
  # step, so the best checkpoint kept is never worse on validation than where RL began.
  # `examples`: 'all' training examples, or 'last' (each user's last training target
  # only: with train.hold_out_last=True in the supervised run, examples it never saw).
  # `sft_weight`: adds that times the target's negative log-likelihood on the same
  # examples to the GRPO loss (0: pure GRPO).
  # The loop keys (num_steps, log_every, eval_every, checkpoint_every, patience,
  # stop_at_step) mean what train.* mean; checkpoints go to WORKDIR/rl/.
  c.rl = ml_collections.ConfigDict(dict(
      enabled=False, init_from="", group_size=16, batch_size=64, num_steps=300,
      lr=1e-5, warmup_steps=0, weight_decay=0.0, grad_clip=1.0, kl_coef=0.001,
      clip_eps=0.2, updates_per_sample=2, temperature=1.0, rewards="auto",
      rollout="sample", examples="all", msra_items=3, msra_decay=0.5,
      validate_at_start=True, sft_weight=0.0,
      log_every=10, eval_every=100, checkpoint_every=100, patience=0, stop_at_step=-1))

  c.eval = ml_collections.ConfigDict(dict(
      beam_size=20, batch_size=256, ks=(1, 5, 10, 20), val_users=0,
      select_metric="ndcg@10",
      test=True,  # False: the evaluate stage scores validation only (searches)
      # False: the evaluate stage scores test only, and the validation figures are the
      # training loop's (eval.val_users); saves a full pass over validation where
      # decoding every user is the cost (Beauty: 22k users a split).
      final_val=True))

  # Device mesh (one size may be -1: the rest); rules: ((path regex, axes per dim), ...),
  # empty = parallel.DEFAULT_RULES. See s2gr_jax/parallel.py.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, rules=()))
  c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=2))
  # Optional Weights & Biases logging (pip install 's2gr_jax[wandb]'); off = never imported.
  c.wandb = ml_collections.ConfigDict(dict(
      enabled=False, project="s2gr_jax", entity="", name="", mode="online"))

  # SIDReasoner (model.name='sidreasoner', s2gr_jax/lm/reasoner.py): `stage` runs one
  # of its stages ('align' | 'activate' | 'rl' | 'eval') after tokenize; '' runs
  # config.stages. `reasoner.lm`: 'gemma3_270m' (GGUF fetched on first use, or
  # `lm_path`) | 'tiny' (random tiny LM, byte vocabulary: tests). `sid_init`: the new SID
  # tokens' embedding rows, 'text' (each the mean title embedding of the items with its
  # code) | 'mean' (all at the mean row); `think_init`: <think>, </think> at the mean row
  # | 'turn' (copies of <start_of_turn>, <end_of_turn>). LoRA with
  # `lora_rank` > 0 (`train_embeddings`: the tied embedding trains too, which the new
  # SID tokens need); `max_history`: the items in training prompts; `bucket`: batches
  # padded to a multiple of it (0: to seq_len), `loss_bucket`: the answer positions a
  # batch computes the head at, padded to a multiple of it (0: of `bucket`; coarser =
  # fewer compilations). Per stage: `steps` (0 skips it),
  # `max_examples` (0: every sample, else a seeded subset). `align.streams`: a subset of
  # lm/corpus.py's STREAMS, `align.weights`: 'stream=weight,...' mixing; `narratives` /
  # `activate.rationales`: user JSON-lines files; `activate.rationale_style`: the data's
  # rationales quote the recent 'titles' (~110 Gemma tokens on Scientific) or name only
  # their leaf 'categories' (~40), to fit `rl.think_tokens` / `eval.think_tokens`.
  # `rl`: GRPO (lm/lm_grpo.py): `group`
  # rollouts of `batch_users` prompts a step, thoughts <= `think_tokens`, gradients in
  # `micro_batch` rows; `val_think`: validate in thinking mode. `eval`: `users` (0 =
  # all) scored for every row, `models`, `modes` ('plain','think'), `protocols`
  # ('spec': history <= data.max_history, 'sidr': <= 10), `splits`, `compare`
  # ('label=workdir,...': runs on the same SIDs, e.g. TIGER and S2GR, scored on the
  # same users).
  c.stage = ""
  c.reasoner = ml_collections.ConfigDict(dict(
      lm="gemma3_270m", lm_path="", sid_init="text", think_init="mean", lora_rank=16,
      lora_alpha=32.0,
      train_embeddings=True,
      dtype="float32", remat=False, max_history=10, seq_len=384, bucket=64, loss_bucket=0,
      chunk=256,
      val_examples=256,
      align=dict(streams=",".join(_corpus_streams()), weights="", narratives="",
                 max_examples=0, steps=3000, batch_size=8, lr=3e-4, warmup=20,
                 eval_every=500, log_every=50, patience=3, stop_at_step=-1),
      activate=dict(rationales="", rationale_style="titles", max_examples=0, steps=1000,
                    batch_size=8, lr=1e-4,
                    warmup=10, eval_every=250, log_every=50, patience=5, stop_at_step=-1),
      rl=dict(steps=200, batch_users=4, group=16, lr=1e-5, warmup=0, kl_coef=0.001,
              temperature=1.0, think_tokens=96, micro_batch=8, max_prompt=256,
              max_examples=0, val_users=200, val_think=True, eval_every=50, log_every=5,
              patience=0, stop_at_step=-1),
      eval=dict(users=0, batch_size=8, think_tokens=96, models="base,align,activate,rl",
                modes="plain,think", protocols="spec,sidr", splits="test,val",
                compare="", keep_thoughts=20)))
  return c


def _corpus_streams():
  from s2gr_jax.lm import corpus  # pylint: disable=g-import-not-at-top
  return corpus.STREAMS


def validate_reasoner(config: ml_collections.ConfigDict) -> None:
  """The SIDReasoner keys (``reasoner.*``): values and combinations."""
  from s2gr_jax.lm import corpus  # pylint: disable=g-import-not-at-top
  from s2gr_jax.lm import reasoner  # pylint: disable=g-import-not-at-top
  r = config.reasoner
  _choice("reasoner.lm", r.lm, ("gemma3_270m", "tiny"))
  _choice("reasoner.sid_init", r.sid_init, ("text", "mean"))
  _choice("reasoner.think_init", r.think_init, ("mean", "turn"))
  _choice("reasoner.activate.rationale_style", r.activate.rationale_style,
          corpus.RATIONALE_STYLES)
  streams = [x.strip() for x in str(r.align.streams).split(",") if x.strip()]
  bad = [x for x in streams if x not in corpus.STREAMS]
  if bad or not streams:
    raise ValueError(f"config.reasoner.align.streams={r.align.streams!r}: unknown "
                     f"{bad}; available: {list(corpus.STREAMS)}")
  for what, spec, allowed in (("models", r.eval.models, ("base",) + reasoner.TRAINED),
                              ("modes", r.eval.modes, reasoner.MODES),
                              ("protocols", r.eval.protocols, reasoner.PROTOCOLS),
                              ("splits", r.eval.splits, ("test", "val"))):
    reasoner._names(spec, allowed, what)  # pylint: disable=protected-access
  if r.rl.steps > 0 and (r.rl.batch_users * r.rl.group) % r.rl.micro_batch:
    raise ValueError(f"config.reasoner.rl: batch_users x group = "
                     f"{r.rl.batch_users * r.rl.group} rollouts do not split into "
                     f"micro_batch={r.rl.micro_batch} rows")
  for key in ("lora_rank", "loss_bucket", "max_history", "seq_len", "val_examples"):
    if int(r[key]) < (0 if key in ("lora_rank", "loss_bucket") else 1):
      raise ValueError(f"config.reasoner.{key}={r[key]} must be positive")
  for key, value in (("reasoner.eval.compare", r.eval.compare),
                     ("reasoner.align.narratives", r.align.narratives),
                     ("reasoner.activate.rationales", r.activate.rationales)):
    if value and key.endswith(("narratives", "rationales")):
      require_local_path(f"config.{key}", value)


def sidreasoner_recipe(dataset: str, arg: str | None) -> ml_collections.ConfigDict:
  """``configs/sidreasoner_{scientific,beauty}.py``: SIDReasoner on Gemma 3 270M over
  CoBa SIDs of the MiniLM text vectors (3 x 256 + de-dup), S2GR's tokenizer.

  Default: the full recipe (every stream, 3,000 + 1,000 SFT steps, 200 GRPO steps,
  every user evaluated): a GPU job. ``:cpu``: what a 2-core CPU allows in about two
  and a half hours (the SID streams, LoRA, short stages, 300 evaluation users);
  ``:tiny``: the random tiny LM, a few steps of each stage (tests, a first look).
  """
  c = base_config()
  c.data.name = dataset
  c.data.length_buckets = (3, 5, 8, 12, 20)
  c.tokenizer.embedding = "text"
  c.tokenizer.kind = "coba"
  c.model.name = "sidreasoner"
  c.stages = "tokenize,align,activate,rl,eval"
  c.eval.update(batch_size=64, beam_size=20)
  # From the mean row, 40 stage-2 steps never emitted </think> (greedy: <end_of_turn> in
  # its place, 20 of 20 thoughts); from the turn tokens' rows, 20 of 20 closed
  # (docs/results.md, 2026-12-08).
  c.reasoner.think_init = "turn"

  def cpu(c):  # about 2.5 h of a 2-core CPU, stages and evaluation (docs/results.md)
    c.reasoner.align.update(streams="sid_history_to_sid,title_to_sid,sid_to_title",
                            steps=200, eval_every=100, log_every=20)
    # Thoughts of <= 64 tokens: the 'categories' rationales fit (98% on Scientific); the
    # 'titles' ones (median 109 tokens) were cut before naming the next category.
    c.reasoner.activate.update(steps=40, eval_every=20, log_every=10,
                               rationale_style="categories")
    c.reasoner.rl.update(steps=6, batch_users=1, group=16, micro_batch=8,
                         think_tokens=64, val_users=50, eval_every=6, log_every=1)
    # 40-200 steps: a compilation per answer-token count (~80 s) costs more than padded
    # head rows; loss_bucket=256 compiles each length bucket once or twice.
    c.reasoner.update(val_examples=96, loss_bucket=256)
    c.reasoner.eval.update(users=300, think_tokens=64, batch_size=10, splits="test",
                           protocols="sidr")

  def tiny(c):
    c.data.update(max_history=5, length_buckets=(3, 5))
    c.tokenizer.update(embedding="text_tfidf", embedding_dim=32, kind="rqkmeans",
                       codebook_size=16)
    c.reasoner.update(lm="tiny", lora_rank=4, max_history=3, seq_len=512, bucket=64,
                      val_examples=8)
    c.reasoner.align.update(streams="sid_history_to_sid,title_to_sid,sid_to_title",
                            max_examples=64, steps=6, batch_size=4, eval_every=3,
                            log_every=3, warmup=1)
    c.reasoner.activate.update(max_examples=32, steps=4, batch_size=4, eval_every=2,
                               log_every=2, warmup=1)
    c.reasoner.rl.update(steps=2, batch_users=2, group=4, micro_batch=4, think_tokens=6,
                         max_prompt=384, max_examples=32, val_users=4, eval_every=1,
                         log_every=1)
    c.reasoner.eval.update(users=6, think_tokens=6, batch_size=3, keep_thoughts=2)
    c.eval.update(batch_size=6, beam_size=20)

  return apply_preset(c, arg, {"cpu": cpu, "tiny": tiny})


def update_models(config: ml_collections.ConfigDict, names=None, **values) -> None:
  """Sets ``values`` in the model sections ``names`` (default: every section) that have
  those keys: one call sizes every encoder–decoder alike."""
  for name in names or models.REGISTRY:
    section = config.model[name]
    section.update({k: v for k, v in values.items() if k in section})


# How configs are compared (resume, tuning, kept eval rows) lives in the infrastructure
# layer, so that a training module can fingerprint a config without importing the recipe.
IGNORED_ON_RESUME = config_keys.IGNORED_ON_RESUME
comparable = config_keys.comparable
differences = config_keys.differences


# Model fields added after runs were saved whose default is not what those runs did:
# the value that reproduces them, for a saved section without the field.
LEGACY_FIELDS = {"sasrec": {"positions": "from_start"}}


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A run's ``config.json`` as a config; one written before the per-model sections
  (a flat ``model`` with every model's fields) gets them, with its values in place, and
  a section written before a field of ``LEGACY_FIELDS`` gets that field's old value."""
  model = dict(saved.get("model", {}))
  if "name" in model and not any(isinstance(v, dict) for v in model.values()):
    flat, name = model, model["name"]
    model = {"name": name, "kernels": "auto"}
    for other in models.REGISTRY:
      section = models.section_defaults(other)
      for key, old in LEGACY_FIELDS.get(other, {}).items():
        section[key] = old
      if other == name:
        section.update({k: v for k, v in flat.items() if k in section})
      model[other] = section
  else:
    for name, fields in LEGACY_FIELDS.items():
      if isinstance(model.get(name), dict):
        model[name] = {**fields, **model[name]}
  if model:
    saved = dict(saved, model=model)
  return ml_collections.ConfigDict(saved)


def explain_override(argv) -> str | None:
  """A clear message for a ``--config.x.y=v`` override whose key does not exist, in
  the terms of the model sections; None when no override is about a model."""
  for arg in argv:
    if not arg.startswith("--config.model."):
      continue
    path = arg[len("--config."):].split("=", 1)[0].split(".")
    if len(path) == 3 and path[1] in models.REGISTRY:
      name, key = path[1], path[2]
      known = models.section_defaults(name)
      if key not in known:
        owners = [m for m in models.REGISTRY if key in models.section_defaults(m)]
        close = difflib.get_close_matches(key, known, n=1)
        hint = (f" ({', '.join(owners)} take{'s' if len(owners) == 1 else ''} it)" if owners
                else f" (did you mean {close[0]!r}?)" if close else "")
        return (f"{arg}: the {name} model has no field {key!r}{hint}; config.model.{name} "
                f"takes: {', '.join(sorted(known))}")
    elif len(path) == 2 and path[1] not in ("name", "kernels"):
      owners = [m for m in models.REGISTRY if path[1] in models.section_defaults(m)]
      if owners:
        return (f"{arg}: model fields live in the model's own section, e.g. "
                f"--config.model.{owners[0]}.{path[1]}=... (taken by: {', '.join(owners)})")
  return None


def require_local_path(what: str, path: str) -> None:
  """Input data is read from the host's disk: remote URLs are refused up front (run
  directories may be ``gs://``: ``fileio.check_run_dir``)."""
  if "://" in str(path):
    raise ValueError(
        f"{what}={path!r}: datasets are read from local paths (the workdir may be gs://, "
        "the data may not). Copy the data folder to each host's disk first, e.g. "
        "gcloud storage cp -r gs://BUCKET/data ./data.")


def _choice(key: str, value, options) -> None:
  if value not in options:
    raise ValueError(f"config.{key}={value!r}; choose one of {list(options)}")


def _positive(config, *keys: str) -> None:
  for key in keys:
    value = config
    for part in key.split("."):
      value = value[part]
    if value <= 0:
      raise ValueError(f"config.{key} must be positive, got {value!r}")


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config`` with the shorthands filled in: ``rl.enabled`` with
  ``rl.init_from`` sets ``init.from_workdir`` and ``tokenizer.from_workdir`` (where
  unset) to that run, so the SFT row and the RL start are its best checkpoint on its
  SIDs."""
  config = ml_collections.ConfigDict(config.to_dict())
  rl = config.get("rl")
  if rl is not None and rl.enabled and rl.init_from:
    config.init.from_workdir = config.init.from_workdir or rl.init_from
    config.tokenizer.from_workdir = config.tokenizer.from_workdir or rl.init_from
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks values and combinations; raises ValueError naming the key."""
  require_local_path("config.data.dir", config.data.dir)
  require_local_path("config.data.tfds_dir", config.data.tfds_dir)
  for what, value in (("tokenizer.from_workdir", config.tokenizer.from_workdir),
                      ("init.from_workdir", config.init.from_workdir)):
    if value:
      fileio.check_run_dir(f"config.{what}", value)
  names = stages.plan(config)
  if "evaluate" in names and "train" not in names and not config.init.from_workdir:
    raise ValueError(f"config.stages={config.stages!r}: 'evaluate' needs a model: add "
                     "'train' before it or set config.init.from_workdir")
  if "evaluate" in names and not (config.eval.test or config.eval.get("final_val", True)):
    raise ValueError("config.eval.test=False and config.eval.final_val=False leave the "
                     "evaluate stage nothing to score: set one of them to True")
  _choice("data.on_short_sequence", config.data.on_short_sequence, ("error", "drop"))
  _choice("tokenizer.embedding", config.tokenizer.embedding,
          ("attributes", "text_tfidf", "text", "npy"))
  _choice("tokenizer.kind", config.tokenizer.kind, quantizers.KINDS)
  _choice("model.name", config.model.name, tuple(models.REGISTRY) + (stages.REASONER,))
  if config.model.name == stages.REASONER:
    validate_reasoner(config)
  _choice("model.kernels", config.model.kernels, ("auto", "cpu", "plain"))
  for name in models.REGISTRY:  # a key a model does not take fails, naming the model
    if name not in config.model:
      raise ValueError(f"config.model has no section {name!r} (config.model.{name})")
    models.check_section(name, config.model[name].to_dict())
  section = f"model.{config.model.name}"
  model = config.model.get(config.model.name, ml_collections.ConfigDict())
  if "dtype" in model:
    _choice(f"{section}.dtype", model.dtype, ("float32", "bfloat16"))
  _positive(config, *(f"{section}.{k}" for k in (
      "d_model", "num_heads", "head_dim", "d_ff", "encoder_layers", "decoder_layers")
                      if k in model))
  if "dropout" in model and not 0 <= model.dropout < 1:
    raise ValueError(f"config.{section}.dropout={model.dropout} must be in [0, 1)")
  _choice("wandb.mode", config.wandb.mode, ("online", "offline", "disabled"))
  _positive(config, "data.max_history", "data.user_buckets", "tokenizer.embedding_dim",
            "tokenizer.levels", "tokenizer.codebook_size", "tokenizer.kmeans_iters",
            "tokenizer.rqvae.latent_dim", "tokenizer.rqvae.steps",
            "tokenizer.rqvae.batch_size", "tokenizer.rqvae.lr",
            "tokenizer.rqvae.log_every", "tokenizer.coba.window",
            "train.batch_size", "train.num_steps", "train.lr",
            "train.log_every", "train.eval_every", "train.checkpoint_every",
            "eval.beam_size", "eval.batch_size", "checkpoint.max_to_keep")
  buckets = tuple(config.data.length_buckets)
  if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] <= 0:
    raise ValueError(f"config.data.length_buckets={buckets} must be increasing positive "
                     "lengths")
  if buckets[-1] != config.data.max_history:
    raise ValueError(f"config.data.length_buckets must end at data.max_history="
                     f"{config.data.max_history}, got {buckets}")
  if config.eval.beam_size < max(config.eval.ks):
    raise ValueError(f"config.eval.beam_size={config.eval.beam_size} must be at least "
                     f"max(eval.ks)={max(config.eval.ks)}")
  metric = config.eval.select_metric
  if metric not in {f"{m}@{k}" for m in ("recall", "ndcg") for k in config.eval.ks}:
    raise ValueError(f"config.eval.select_metric={metric!r} must be recall@K or ndcg@K "
                     f"with K in eval.ks={tuple(config.eval.ks)}")
  if config.train.warmup_steps < 0 or config.train.warmup_steps >= config.train.num_steps:
    raise ValueError("config.train.warmup_steps must be in [0, train.num_steps)")
  mpq_cfg = config.tokenizer.mpq
  _positive(config, "tokenizer.mpq.latent_dim", "tokenizer.mpq.steps",
            "tokenizer.mpq.batch_size", "tokenizer.mpq.lr", "tokenizer.mpq.log_every")
  if mpq_cfg.experts < 2:
    raise ValueError(f"config.tokenizer.mpq.experts={mpq_cfg.experts}: MPQ needs at least "
                     "2 parallel codebooks")
  sizes = tuple(mpq_cfg.codebook_sizes)
  if sizes and (len(sizes) != mpq_cfg.experts or min(sizes) < 2):
    raise ValueError(f"config.tokenizer.mpq.codebook_sizes={sizes}: expected one size "
                     f"per expert ({mpq_cfg.experts}), each at least 2, or () for "
                     "tokenizer.codebook_size each")
  if mpq_cfg.combine not in ("sum", "concat"):
    raise ValueError(f"config.tokenizer.mpq.combine={mpq_cfg.combine!r}: expected 'sum' "
                     "or 'concat'")
  if (min(mpq_cfg.orthogonality_weight, mpq_cfg.commitment, mpq_cfg.balance_gamma,
          mpq_cfg.restart_every, mpq_cfg.independence_weight) < 0
      or mpq_cfg.independence_temperature <= 0 or not 0 <= mpq_cfg.balance_eps < 1
      or not 0 <= mpq_cfg.usage_decay < 1):
    raise ValueError("config.tokenizer.mpq: weights and periods must be >= 0, balance_eps "
                     "and usage_decay in [0, 1)")
  coba = config.tokenizer.coba
  if coba.propagation_hops < 0 or not 0 < coba.propagation_alpha <= 1:
    raise ValueError("config.tokenizer.coba needs propagation_hops >= 0 and "
                     "0 < propagation_alpha <= 1")
  if not 0 <= coba.balance_eps < 1 or not 0 <= coba.usage_decay < 1:
    raise ValueError("config.tokenizer.coba.balance_eps and usage_decay must be in [0, 1)")
  if min(coba.uniformity_weight, coba.balance_gamma, coba.restart_every) < 0:
    raise ValueError("config.tokenizer.coba weights and periods must be >= 0")
  rl = config.get("rl")  # (absent from the config.json of older runs)
  if config.model.name == stages.REASONER:
    if rl is not None and rl.enabled:
      raise ValueError("config.rl.* is the GRPO stage of the SID generators; SIDReasoner's "
                       "is its stage 'rl' with the keys config.reasoner.rl.*")
  elif rl is not None and (rl.enabled or "rl" in names):
    _positive(config, "rl.group_size", "rl.batch_size", "rl.num_steps", "rl.log_every",
              "rl.eval_every", "rl.checkpoint_every", "rl.updates_per_sample",
              "rl.temperature", "rl.msra_items")
    if rl.group_size < 2:
      raise ValueError(f"config.rl.group_size={rl.group_size}: group-normalised "
                       "advantages need at least 2 paths per user")
    if min(rl.lr, rl.kl_coef, rl.clip_eps, rl.weight_decay, rl.warmup_steps,
           rl.sft_weight) < 0:
      raise ValueError("config.rl.lr, kl_coef, clip_eps, weight_decay, warmup_steps and "
                       "sft_weight must be >= 0")
    if not 0 < rl.msra_decay <= 1:
      raise ValueError(f"config.rl.msra_decay={rl.msra_decay} must be in (0, 1]")
    if rl.init_from:
      fileio.check_run_dir("config.rl.init_from", rl.init_from)
    if models.get(config.model.name).search not in ("prefix", "sets"):
      raise ValueError(f"config.rl: model {config.model.name!r} scores items directly; "
                       "GRPO samples the paths of a generator over Semantic IDs (tiger, "
                       "s2gr, reg4rec)")
    from s2gr_jax.rl import rewards  # pylint: disable=g-import-not-at-top
    weights = rewards.parse_weights(rl.rewards, "sets",
                                    allow_none=float(rl.get("sft_weight", 0.0)) > 0)
    rollout = rl.get("rollout", "sample")
    if rollout not in ("sample", "beam"):
      raise ValueError(f"config.rl.rollout={rollout!r}: expected 'sample' (paths drawn "
                       "from the policy) or 'beam' (the constrained beam search's best)")
    if rl.get("examples", "all") not in ("all", "last"):
      raise ValueError(f"config.rl.examples={rl.examples!r}: expected 'all' or 'last'")
    if weights.get("rank") and rollout != "beam":
      raise ValueError("config.rl.rewards has 'rank', MiniOneRec's ranking reward, which "
                       "reads each path's place in the beam: set config.rl.rollout='beam'")
  if config.tokenizer.embedding == "npy" and not config.tokenizer.embedding_path:
    raise ValueError("config.tokenizer.embedding='npy' needs "
                     "config.tokenizer.embedding_path")


def synthetic_recipe(arg: str | None = None,
                     model: str | None = None) -> ml_collections.ConfigDict:
  """The built-in default (``configs/default.py``): the synthetic dataset, a small S²GR.

  ``:tiny`` is a smaller catalogue and model, for tests and notebooks (a minute on CPU),
  with TIGER unless ``model`` says otherwise; ``--config.model.name=tiger`` trains TIGER
  at the default size.
  """
  c = base_config()
  c.data.name = "synthetic"
  c.model.name = model or ("tiger" if arg == "tiny" else "s2gr")
  # No user token: with 2,000 users it only lets the model memorise users (docs/results.md:
  # 200 buckets R@10 0.1560 → none 0.1685).
  c.data.user_buckets = 1
  c.tokenizer.embedding = "attributes"
  # 128 SVD dimensions and a balanced last level split the items of a leaf (which share
  # their categories and brand): collisions 0.53 → 0.49 and R@10 0.1935 → 0.2250.
  c.tokenizer.embedding_dim = 128
  c.tokenizer.sinkhorn_last_level = True
  c.tokenizer.codebook_size = 64
  update_models(c, d_model=64, num_heads=4, head_dim=16, d_ff=256, encoder_layers=2,
                decoder_layers=2, dropout=0.1, anchor_layers=1,
                # the named variant: which history item is the most recent
                recency_embeddings=True)
  # The auxiliary losses at 0.1: at SPEC's weight 1 they outweigh L_rec (ablation rows
  # in docs/results.md).
  c.model.s2gr.update(align_weight=0.1, nce_weight=0.1)
  c.train.update(batch_size=256, num_steps=1200, lr=3e-3, warmup_steps=100,
                 log_every=100, eval_every=300, checkpoint_every=300, patience=3)
  c.eval.update(batch_size=256)

  def tiny(c):
    c.data.user_buckets = 2000
    c.data.synthetic.update(num_users=300, num_items=200)
    c.tokenizer.update(codebook_size=16, embedding_dim=32, sinkhorn_last_level=False)
    update_models(c, d_model=32, num_heads=2, head_dim=16, d_ff=64, encoder_layers=1,
                  decoder_layers=1, num_clusters=4)
    c.train.update(batch_size=32, num_steps=40, warmup_steps=5, log_every=10,
                   eval_every=20, checkpoint_every=20)
    c.eval.update(batch_size=64)

  return apply_preset(c, arg, {"tiny": tiny})


def amazon_recipe(dataset: str, model: str, arg: str | None) -> ml_collections.ConfigDict:
  """The shared recipe of ``configs/{tiger,s2gr,sasrec}_{beauty,scientific}.py``.

  Default: the paper budget (batch 256, 200k steps, selection on validation NDCG@10),
  a GPU job. Presets: ``:cpu`` the paper model at a reduced budget (3,000 steps),
  ``:compare`` small models at 1,500 steps (the README's CPU comparison of tokenizers
  and models: the same budget for every row), ``:converge`` the same small models
  trained until validation stops improving (early stopping, capped to fit 2 CPU cores:
  about 30 min on Scientific, 90 min on Beauty), ``:converge_grpo`` (SID generators only):
  ``:converge`` without each user's last training target, then GRPO on those targets
  (10–25 more minutes), ``:tiny`` a few minutes on a CPU (TF-IDF
  item vectors, RQ-KMeans, small models, short training).
  """
  c = base_config()
  c.data.name = dataset
  c.data.length_buckets = (3, 5, 8, 12, 20)
  c.tokenizer.embedding = "text"
  c.tokenizer.kind = {"tiger": "rqvae", "s2gr": "coba", "sasrec": "rqkmeans",
                      "reg4rec": "mpq"}[model]
  c.model.name = model
  # The tuned SASRec shape (small, more dropout) is its section's default.
  c.model.sasrec.update(d_model=64, num_heads=2, head_dim=32, d_ff=256, encoder_layers=2,
                        dropout=0.2)
  c.train.update(batch_size=256, num_steps=200_000, lr=1e-3, warmup_steps=10_000,
                 log_every=200, eval_every=5_000, checkpoint_every=5_000, patience=10)
  c.eval.update(batch_size=256, beam_size=20, val_users=5_000)

  def cpu(c):
    c.train.update(num_steps=3_000, lr=2e-3, warmup_steps=300, log_every=50,
                   eval_every=500, checkpoint_every=250, patience=4)
    c.eval.val_users = 3_000

  def small_model(c):  # the SID generators; SASRec keeps its tuned shape
    update_models(c, ("tiger", "s2gr", "reg4rec"), d_model=64, num_heads=4, head_dim=16,
                  d_ff=256, encoder_layers=2, decoder_layers=2, anchor_layers=1)

  def tiny(c):
    c.tokenizer.update(embedding="text_tfidf", embedding_dim=64,
                       kind="mpq" if model == "reg4rec" else "rqkmeans")
    c.tokenizer.mpq.update(steps=300, log_every=100)  # used by REG4Rec only
    small_model(c)
    c.train.update(num_steps=300, lr=3e-3, warmup_steps=30, log_every=50,
                   eval_every=150, checkpoint_every=150)
    c.eval.val_users = 1_000

  def compare(c):  # the README's CPU comparison budget: small models, 1,500 steps
    small_model(c)
    c.train.update(num_steps=1_500, lr=3e-3, warmup_steps=150, log_every=100,
                   eval_every=500, checkpoint_every=500, patience=4)
    c.eval.val_users = 2_000

  # Converged on a 2-core CPU: the :compare models trained until validation NDCG@10
  # stops rising (patience 4 validations), capped where a run fits the CPU budget of
  # the dataset (Scientific: 131 steps an epoch at batch 256, ≈ 30 min; Beauty: 513,
  # ≈ 90 min). The cosine schedule decays over the cap.
  caps = {"scientific": (8_000, 500), "beauty": (25_000, 1_000)}

  def converge(c):
    small_model(c)
    # which history item is the most recent: +8-9 % R@10 for TIGER and S²GR on
    # Scientific (docs/results.md)
    update_models(c, ("tiger", "s2gr", "reg4rec"), recency_embeddings=True)
    steps, every = caps.get(dataset, (20_000, 1_000))
    c.train.update(num_steps=steps, lr=3e-3, warmup_steps=300, log_every=100,
                   eval_every=every, checkpoint_every=every, patience=4)
    c.eval.val_users = 3_000

  # :converge, then GRPO on examples the supervised run never saw: the supervised
  # stage skips each user's last training target, GRPO (beam rollouts, exact item +
  # ranking reward, plus 0.1 x the target's NLL) trains on exactly those; λ 0.1 chosen
  # over 1 on validation (docs/results.md, REG4Rec on Scientific); 600 steps, as every
  # seed of TIGER and REG4Rec had its best validation at step 500-600 (300 before).
  def converge_grpo(c):
    converge(c)
    c.train.hold_out_last = True
    c.rl.update(enabled=True, examples="last", rollout="beam",
                rewards="global_path=1,rank=1", msra_items=1, sft_weight=0.1, lr=1e-4,
                num_steps=600, eval_every=50, checkpoint_every=50)

  presets = {"cpu": cpu, "tiny": tiny, "compare": compare, "converge": converge}
  if model != "sasrec":  # GRPO needs a SID generator
    presets["converge_grpo"] = converge_grpo
  return apply_preset(c, arg, presets)


def apply_preset(config: ml_collections.ConfigDict, arg: str | None,
                 presets: dict) -> ml_collections.ConfigDict:
  """Applies ``presets[arg]`` (a function that edits the config) for ``file.py:arg``."""
  if arg:
    if arg not in presets:
      raise ValueError(f"unknown preset ':{arg}'; available: {sorted(presets)}")
    presets[arg](config)
  return config
