"""Device mesh from the config, and placement of host data on it.

The model knows nothing of devices; this module knows nothing of the model. Batches are
split over the ``data`` axis; parameters and optimizer state are replicated (sharded
layouts over fsdp/tensor axes come with the scale-out work, as rules in the config).
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import numpy as np


def make_mesh(mesh_cfg) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over all devices (``mesh.data=-1``) or the first ``mesh.data``."""
  n = jax.device_count()
  data = n if mesh_cfg.data == -1 else mesh_cfg.data
  if not 1 <= data <= n:
    raise ValueError(f"config.mesh.data={mesh_cfg.data}: there are {n} devices "
                     "(use -1 for all of them)")
  if data < n and jax.process_count() > 1:
    raise ValueError(f"config.mesh.data={data} leaves devices unused, which multi-host "
                     "runs cannot do; use -1")
  devices = np.asarray(jax.devices()[:data])
  return jax.sharding.Mesh(devices, ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh, what: str) -> int:
  """The per-host share of a global batch; it must split evenly over devices."""
  data = mesh.shape["data"]
  if global_batch % data:
    raise ValueError(f"config.{what}={global_batch} must be a multiple of the "
                     f"{data} data-parallel devices")
  return global_batch // jax.process_count()


def shard_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict:
  """Host-local numpy batch → global jax arrays split over the data axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
