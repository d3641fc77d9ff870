"""How good are the Semantic IDs? Codebook statistics and their plots.

* utilisation: share of a level's codes that some item uses;
* perplexity: exp of the entropy of a level's code usage (K when perfectly even);
* collision rate: share of items whose semantic codes (before the de-dup level) are
  shared with another item; unique-SID share: distinct semantic tuples / items;
* reconstruction error (written by the tokenizer stage): mean squared error per element
  of the tokenizer's scaled input, from the sum of an item's code vectors (through the
  decoder for RQ-VAEs).
"""

from __future__ import annotations

import numpy as np

from s2gr_jax import fileio
from s2gr_jax.sid import table as table_lib

STATS_FILE = "codebook_stats.json"


def code_stats(codes: np.ndarray, codebook_sizes) -> dict:
  """Statistics of semantic codes int[num_items, levels]."""
  codes = np.asarray(codes)
  if np.ndim(codebook_sizes) == 0:
    codebook_sizes = (int(codebook_sizes),) * codes.shape[1]
  utilization, perplexity, usage = [], [], []
  for level, size in enumerate(codebook_sizes):
    counts = np.bincount(codes[:, level], minlength=size)
    p = counts[counts > 0] / counts.sum()
    utilization.append(float((counts > 0).mean()))
    perplexity.append(float(np.exp(-(p * np.log(p)).sum())))
    usage.append(counts.tolist())
  _, inverse, group_sizes = np.unique(codes, axis=0, return_inverse=True,
                                      return_counts=True)
  colliding = group_sizes[inverse.ravel()] > 1
  return {
      "utilization": utilization,
      "perplexity": perplexity,
      "collision_rate": float(colliding.mean()),
      "unique_sid_share": float(len(group_sizes) / len(codes)),
      "max_collision_group": int(group_sizes.max()),
      "usage_counts": usage,
  }


def codebook_stats(table: table_lib.SidTable) -> dict:
  """``code_stats`` of a table's semantic levels, plus its shape."""
  stats = code_stats(table.codes[:, :table.semantic_levels],
                     table.codebook_sizes[:table.semantic_levels])
  stats.update(num_items=table.num_items, semantic_levels=table.semantic_levels,
               codebook_sizes=list(table.codebook_sizes))
  return stats


def save_stats(stats: dict, folder) -> str:
  fileio.makedirs(folder)
  path = fileio.join(folder, STATS_FILE)
  fileio.write_json(path, stats, indent=2)
  return str(path)


def plot_usage(stats: dict, path) -> None:
  """Per-level histograms of code usage, codes sorted from most to least used."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  usage = stats["usage_counts"]
  fig, axes = plt.subplots(1, len(usage), figsize=(4 * len(usage), 3), squeeze=False)
  for level, (ax, counts) in enumerate(zip(axes[0], usage)):
    counts = np.sort(np.asarray(counts))[::-1]
    ax.bar(np.arange(len(counts)), counts, width=1.0, color="tab:blue")
    ax.axhline(counts.sum() / len(counts), color="tab:red", lw=1, label="even usage")
    ax.set_title(f"level {level}: {stats['utilization'][level]:.1%} used, "
                 f"perplexity {stats['perplexity'][level]:.0f}", fontsize=9)
    ax.set_xlabel("code (sorted by usage)")
    ax.set_ylabel("items")
    ax.legend(fontsize=8)
  fig.suptitle(f"collision rate {stats['collision_rate']:.3f}, unique SIDs "
               f"{stats['unique_sid_share']:.3f}", fontsize=10)
  fig.tight_layout()
  fileio.save_figure(fig, path, dpi=110)
  plt.close(fig)


def plot_training(history: dict, path) -> None:
  """Utilisation per level, collision rate and reconstruction error over training."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  steps = history["step"]
  util = np.asarray(history["utilization"])
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
  for level in range(util.shape[1]):
    axes[0].plot(steps, util[:, level], label=f"level {level}")
  axes[0].set_title("codebook utilisation")
  axes[0].set_ylim(0, 1.02)
  axes[0].legend(fontsize=8)
  axes[1].plot(steps, history["collision_rate"], color="tab:red")
  axes[1].set_title("collision rate (before de-dup)")
  axes[2].plot(steps, history["recon_mse"], color="tab:green")
  axes[2].set_title("reconstruction MSE")
  axes[2].set_yscale("log")
  for ax in axes:
    ax.set_xlabel("tokenizer step")
  fig.tight_layout()
  fileio.save_figure(fig, path, dpi=110)
  plt.close(fig)
