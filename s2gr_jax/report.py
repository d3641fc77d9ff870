r"""Results tables and plots from run directories.

  python -m s2gr_jax.report runs/a runs/b ... [--out report/]

Reads each workdir's output contract (``config.json``, ``results.json``,
``metrics.jsonl``, ``environment.json``, ``sid/codebook_stats.json``) and writes
``report.md`` with the results table (runs that differ only in their seed form one row:
mean ± standard error), the non-learned rows (popularity, last-item, history transitions) of every dataset, and PNG
plots: training loss and validation NDCG@10 over steps, per-level codebook usage, and
test metrics by history length.
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import numpy as np

from s2gr_jax import baselines as baselines_lib
from s2gr_jax import fileio
from s2gr_jax import metric_writer
from s2gr_jax import models

METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
SEED_KEYS = ("seed",)


def _read_json(path):
  return fileio.read_json(path) if fileio.exists(path) else None


def load_run(workdir: str) -> dict:
  """A run's outputs, from a local workdir or a gs:// one."""
  config = _read_json(fileio.join(workdir, "config.json"))
  results = _read_json(fileio.join(workdir, "results.json"))
  if config is None or not results:
    raise FileNotFoundError(f"{workdir}: no config.json / results.json (is it a finished "
                            "run directory?)")
  metrics_path = fileio.join(workdir, metric_writer.METRICS_FILE)
  lines = metric_writer.read_metrics(workdir) if metrics_path.exists() else []
  return {"dir": workdir, "config": config, "results": results, "metrics": lines,
          "env": _read_json(fileio.join(workdir, "environment.json")) or {},
          "sid": _read_json(fileio.join(workdir, "sid", "codebook_stats.json"))}


def label(run: dict) -> str:
  c = run["config"]
  name = c["model"]["name"]
  entry = models.REGISTRY.get(name)
  if entry is not None and not entry.uses_sids:  # over item ids (SASRec): no tokenizer
    return name
  # The SIDs' own record first: with tokenizer.from_workdir they come from another run's
  # tokenizer, whatever this config's tokenizer.kind says. Runs made before the tokenizer
  # section existed kept it under sid.quantizer.
  kind = (run.get("sid") or {}).get("tokenizer") or (
      c.get("tokenizer") or c.get("sid", {}).get("quantizer", {})).get("kind", "?")
  return f"{name} · {kind}"


def group_key(run: dict) -> str:
  """Runs with the same config apart from seeds (and where their SIDs came from)."""
  c = json.loads(json.dumps(run["config"]))
  for key in SEED_KEYS:
    c.pop(key, None)
  c.get("tokenizer", {}).pop("from_workdir", None)
  # ...but runs whose SIDs differ (another tokenizer reused through from_workdir) do not
  # merge: the SIDs' own record is part of the key.
  sid = run.get("sid") or {}
  c["_sid"] = {k: sid.get(k) for k in ("tokenizer", "embedding", "codebook_sizes")}
  return json.dumps(c, sort_keys=True)


def mean_se(values) -> tuple[float, float]:
  v = np.asarray(values, float)
  return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def _cell(values) -> str:
  m, se = mean_se(values)
  return f"{m:.4f} ± {se:.4f}" if len(values) > 1 else f"{m:.4f}"


def results_table(runs: list[dict], split: str = "test") -> str:
  groups = collections.OrderedDict()
  for run in runs:
    groups.setdefault(group_key(run), []).append(run)
  head = ("| dataset | users | model | seeds | " + " | ".join(m.replace(
      "recall", "R").replace("ndcg", "N") for m in METRICS)
          + " | steps | train time | hardware |")
  lines = [head, "|---" * (len(METRICS) + 7) + "|"]
  baselines = collections.OrderedDict()
  for members in groups.values():
    first = members[0]
    dataset = first["results"].get("data/name", first["config"]["data"]["name"])
    users = first["results"].get("data/num_users", 0)
    cells = [_cell([r["results"][f"{split}/{m}"] for r in members]) for m in METRICS]
    hours = np.mean([r["results"]["train/wall_s"] for r in members]) / 3600
    hardware = first["env"].get("backend", "?")
    if first["env"].get("cpu_count") and hardware == "cpu":
      hardware = f"{first['env']['cpu_count']}-core CPU"
    lines.append(f"| {dataset} | {users:,} | {label(first)} | {len(members)} | "
                 + " | ".join(cells)
                 + f" | {first['results']['train/steps']:,} | {hours:.2f} h | {hardware} |")
    for base in baselines_lib.NAMES:
      key = f"baselines/{base}/{split}/recall@10"
      if key in first["results"] and (dataset, users, base) not in baselines:
        baselines[(dataset, users, base)] = [
            first["results"][f"baselines/{base}/{split}/{m}"] for m in METRICS]
  for (dataset, users, base), values in baselines.items():
    lines.append(f"| {dataset} | {users:,} | {base} | – | "
                 + " | ".join(f"{v:.4f}" for v in values) + " | – | – | – |")
  return "\n".join(lines)


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_curves(runs: list[dict], path: str) -> None:
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
  for run in runs:
    name = f"{label(run)} ({os.path.basename(os.path.normpath(run['dir']))})"
    train = [(r["step"], r["train/loss"]) for r in run["metrics"] if "train/loss" in r]
    val = [(r["step"], r["val/ndcg@10"]) for r in run["metrics"] if "val/ndcg@10" in r]
    if train:
      axes[0].plot(*zip(*train), label=name)
    if val:
      axes[1].plot(*zip(*val), marker="o", label=name)
  axes[0].set_title("training loss")
  axes[1].set_title("validation NDCG@10")
  for ax in axes:
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_codebooks(runs: list[dict], path: str) -> bool:
  plt = _plt()
  with_sid = [r for r in runs if r["sid"] and r["sid"].get("usage_counts")]
  if not with_sid:
    return False
  levels = max(len(r["sid"]["usage_counts"]) for r in with_sid)
  fig, axes = plt.subplots(1, levels, figsize=(4 * levels, 3.2), squeeze=False)
  for run in with_sid:
    for level, counts in enumerate(run["sid"]["usage_counts"]):
      counts = np.sort(np.asarray(counts))[::-1]
      axes[0][level].plot(counts, label=f"{label(run)}: {run['sid']['utilization'][level]:.1%}")
  for level, ax in enumerate(axes[0]):
    ax.set_title(f"level {level}: items per code (sorted)")
    ax.set_xlabel("code")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_by_history(runs: list[dict], path: str, metric: str = "ndcg@10") -> bool:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 3.6))
  drawn, missing = False, 0
  for run in runs:
    pts = sorted((int(k.split("/")[1]), v) for k, v in run["results"].items()
                 if k.startswith("test_by_history/") and k.endswith("/" + metric))
    if pts:
      name = f"{label(run)} ({os.path.basename(os.path.normpath(run['dir']))})"
      ax.plot(*zip(*pts), marker="o", label=name)
      drawn = True
    else:
      missing += 1
  if not drawn:
    plt.close(fig)
    return False
  ax.set_xlabel("history length bucket (items, upper bound)")
  ax.set_ylabel(f"test {metric}")
  note = f"\n({missing} run(s) without by-history metrics not shown)" if missing else ""
  ax.set_title(f"test {metric} by history length{note}")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def write_report(workdirs: list[str], out: str) -> str:
  runs = [load_run(w) for w in workdirs]
  os.makedirs(out, exist_ok=True)
  parts = ["# Results", "", "Test (full-catalogue ranking; mean ± standard error over "
           "seeds where several):", "", results_table(runs, "test"), "",
           "Validation:", "", results_table(runs, "val"), "", "Runs:", ""]
  for run in runs:
    env = run["env"]
    parts.append(f"- `{run['dir']}`: {label(run)}, seed {run['config']['seed']}, "
                 f"{run['results']['train/steps']} steps, "
                 f"{run['results']['train/wall_s'] / 60:.1f} min training, "
                 f"jax {env.get('jax', '?')} on {env.get('backend', '?')}, "
                 f"commit {str(env.get('git_commit'))[:10]}")
  plot_curves(runs, os.path.join(out, "curves.png"))
  parts += ["", "![training and validation curves](curves.png)"]
  if plot_codebooks(runs, os.path.join(out, "codebooks.png")):
    parts += ["", "![codebook usage per level](codebooks.png)"]
  if plot_by_history(runs, os.path.join(out, "by_history.png")):
    parts += ["", "![test NDCG@10 by history length](by_history.png)"]
  text = "\n".join(parts) + "\n"
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(text)
  return text


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m s2gr_jax.report", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdirs", nargs="+")
  p.add_argument("--out", default="report", help="folder for report.md and the plots")
  args = p.parse_args(argv)
  print(write_report(args.workdirs, args.out))


if __name__ == "__main__":
  main()
