"""Device mesh and shardings for data parallelism over every device of every process.

The batch is split along its leading axis over the mesh axis 'data'; the train state is replicated.
Under jit, BatchNorm then normalises over the *global* batch, exactly as on one device.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXIS = 'data'


def make_mesh() -> Mesh:
  """A 1-D mesh over all devices with an Auto axis (jax.make_mesh would default to Explicit)."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, key: str = 'train.batch_size') -> None:
  """The global batch must split evenly over all devices (and over the processes feeding them)."""
  n = jax.device_count()
  if batch_size % n:
    raise ValueError(f'{key}={batch_size} is not divisible by the {n} devices; use a multiple of {n}.')


def local_batch_size(global_batch_size: int) -> int:
  """Examples this process contributes to each global batch."""
  return global_batch_size // jax.process_count()


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles per-process numpy batches into one batch-sharded global array per key."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))
