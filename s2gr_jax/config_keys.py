"""Configs as flat, comparable values: what a resumed run, a tuning study and a kept
eval row check against the config that made them.

Plain dictionaries in, plain dictionaries out; no project imports, so every layer may use
it (``config_lib`` re-exports it for the recipe layer).
"""

from __future__ import annotations

import json


# Config keys that do not change a run's result (where files are, how it is shown, how a
# batch is padded): they may differ between a run and its resumption (another machine,
# another data path).
IGNORED_ON_RESUME = ("data.dir", "data.tfds_dir", "data.num_threads",
                     "tokenizer.text_encoder_dir", "train.progress_bar", "wandb",
                     "reasoner.loss_bucket")


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def comparable(config_dict: dict, ignore: tuple[str, ...] = ()) -> dict:
  """A config as flat JSON values, without the keys that do not change a result (and
  the keys, or sections, in ``ignore``)."""
  flat = _flat(json.loads(json.dumps(config_dict)))
  skip = IGNORED_ON_RESUME + tuple(ignore)
  return {k: v for k, v in flat.items()
          if not any(k == i or k.startswith(i + ".") for i in skip)}


def differences(a: dict, b: dict, ignore: tuple[str, ...] = ()) -> list[str]:
  """``key: old vs new`` for every result-changing key where configs ``a`` and ``b``
  differ (a key only one of them has counts, with None for the other)."""
  a, b = comparable(a, ignore), comparable(b, ignore)
  return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k)]
