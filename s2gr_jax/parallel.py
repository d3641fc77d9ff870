"""Device mesh and sharding rules from the config; host data placed on the mesh.

The model knows nothing of devices; this module knows nothing of the model beyond
parameter paths. The mesh has three axes:

* ``data``: batch split, everything else replicated;
* ``fsdp``: batch split too, and parameters / optimizer state split along one dimension
  (fully-sharded data parallelism);
* ``tensor``: attention heads and MLP width split (tensor parallelism).

``config.mesh.{data,fsdp,tensor}`` give the sizes; one of them may be -1 (the rest of the
devices). ``config.mesh.rules`` maps regular expressions over parameter paths
(``encoder/0/attn/q/kernel``; optimizer moments match by the same suffix) to a
partition of the array's dimensions over the axes; the first matching rule wins, a
dimension that does not divide by its axes stays whole, and unmatched arrays are
replicated. Shapes come first (``jax.eval_shape``), so nothing is materialised on one
device and then scattered.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import numpy as np

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# [d_in, d_out] projections into heads / MLP width: rows over fsdp, columns over tensor;
# the projections back to d_model the other way round; embeddings [vocab, d] by rows.
DEFAULT_RULES = (
    (r"(embed|items|word_embeddings|item_embed|recency)/embedding$", ("fsdp", "tensor")),
    (r"/(q|k|v|wi|query|key|value|intermediate)/kernel$", ("fsdp", "tensor")),
    (r"/(o|wo|attention_out|output)/kernel$", ("tensor", "fsdp")),
    (r"head/kernel$", ("fsdp", "tensor")),
    (r"(encoder|decoder)/\d+/kernel$", ("fsdp", "tensor")),  # MLP stacks (RQ-VAE)
    (r"/(gate|up)/kernel$", ("fsdp", "tensor")),  # Gemma's gated MLP (lm/gemma.py)
    (r"/down/kernel$", ("tensor", "fsdp")),
)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Resolves ``mesh.{data,fsdp,tensor}`` (one may be -1) against the device count."""
  sizes = [int(mesh_cfg[a]) for a in AXES]
  auto = [i for i, s in enumerate(sizes) if s == -1]
  if len(auto) > 1:
    raise ValueError(f"config.mesh: only one of {AXES} may be -1, got "
                     f"{dict(zip(AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh sizes must be positive or -1, got "
                     f"{dict(zip(AXES, sizes))}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if auto:
    if num_devices % known:
      raise ValueError(f"config.mesh {dict(zip(AXES, sizes))}: {known} does not divide "
                       f"the {num_devices} devices")
    sizes[auto[0]] = num_devices // known
  total = int(np.prod(sizes))
  if total > num_devices or num_devices % total:
    raise ValueError(f"config.mesh {dict(zip(AXES, sizes))} needs {total} devices, which "
                     f"does not divide the {num_devices} available")
  return tuple(sizes)


def make_mesh(mesh_cfg) -> jax.sharding.Mesh:
  """The (data, fsdp, tensor) mesh; a single-process run may use a leading subset of
  the devices (e.g. ``mesh.data=1`` on an 8-device host)."""
  n = jax.device_count()
  shape = mesh_shape(mesh_cfg, n)
  used = int(np.prod(shape))
  if used < n and jax.process_count() > 1:
    raise ValueError(f"config.mesh {shape} uses {used} of {n} devices; multi-host runs "
                     "must use them all")
  devices = np.asarray(jax.devices()[:used]).reshape(shape)
  return jax.sharding.Mesh(devices, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh, what: str) -> int:
  """The per-host share of a global batch; it must split evenly over the batch axes."""
  split = data_parallel_size(mesh)
  if global_batch % split:
    raise ValueError(f"config.{what}={global_batch} must be a multiple of the {split} "
                     "devices the batch is split over (mesh.data × mesh.fsdp)")
  return global_batch // jax.process_count()


def shard_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict:
  """Host-local numpy batch → global jax arrays split over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def path_string(path: Sequence[Any]) -> str:
  """``0/encoder/0/attn/q/kernel`` for a pytree path (NNX's trailing ``value`` dropped)."""
  parts = []
  for key in path:
    key = getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))
    parts.append(str(key))
  if parts and parts[-1] == "value":
    parts.pop()
  return "/".join(parts)


def spec_for(path: str, shape: tuple[int, ...], mesh: jax.sharding.Mesh,
             rules: Sequence[tuple[str, Sequence[Any]]]) -> P:
  """The partition of one array: the first matching rule, minus axes that don't divide."""
  for pattern, axes in rules:
    if re.search(pattern, path) and len(axes) == len(shape):
      spec = []
      for dim, axis in zip(shape, axes):
        names = () if axis is None else ((axis,) if isinstance(axis, str) else tuple(axis))
        size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        spec.append(axis if names and size > 1 and dim % size == 0 else None)
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: jax.sharding.Mesh, rules=DEFAULT_RULES):
  """NamedShardings for every leaf of a (model, optimizer) state, by ``rules``."""
  def one(path, leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    return NamedSharding(mesh, spec_for(path_string(path), shape, mesh, rules))
  return jax.tree_util.tree_map_with_path(one, abstract_state)


def rules_from_config(mesh_cfg) -> tuple:
  rules = tuple((str(r[0]), tuple(r[1])) for r in mesh_cfg.rules) if mesh_cfg.rules else ()
  return rules or DEFAULT_RULES
